"""`python -m forecast specialise model=<run id | models:/..> [specialists=[no_news,calm]] [router=gated]`:
small specialists cut from the full model, a router, and the full model as the fallback, registered
as one MLflow model that `predict` serves.

1. The full model, its logged config and data (same store, splits and normalisation), every split's
   batches in order, and its forecasts (the distillation targets, the reference of every number).
2. Each specialist (conf/specialist/): its slice fitted on the training windows; it serves the
   windows its slice is the first to hold (routing order), and one whose slice serves none is
   reported and skipped. It is distilled (compress/distill.py) on every request of its slice in the
   training period (validated on its slice of the validation period).
3. The router (conf/router/): a logistic gate per specialist fitted on validation, the threshold
   chosen on validation (or given), the input range from the training windows.
4. The report (specialise_report.py): per route share, FLOPs (analytic, router and fallback
   included), IC and correlation with the full model on test; the IC / share-served curve beside a
   dense student of the same average FLOPs; latency p50/p95 of one daily cross-section.
The last line is `served_by_specialists=.. fallback=.. compute_saved=.. speedup=.. ic_delta=..`.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from forecast.compress import accuracy, distill
from forecast.compress.route import FALLBACK, RoutedForecaster, Router, cheap_features, route_at
from forecast.errors import UserError


@dataclass
class Setup:
    """The full model, its data and what every later step reads."""
    cfg: DictConfig
    full: torch.nn.Module
    full_cfg: DictConfig
    full_run: str
    state: dict
    dm: object
    splits: dict  # train / val / test: accuracy.Split
    full_scores: dict = field(default_factory=dict)  # split -> (N,) the full model's scaled forecasts
    teacher_train: torch.Tensor = None


def specialise(cfg: DictConfig) -> int:
    from forecast.compress import specialise_report as report
    from forecast.tracking import runs

    _, _, run_id = runs.resolve_model(cfg.logger.tracking_uri, str(cfg.model_ref))
    s = setup(cfg, run_id)
    specialists, slices = build_specialists(s)
    router = fit_router(s, specialists, slices)
    routed = RoutedForecaster(s.full, specialists, router).eval()
    experiment_id = runs.connect(cfg.logger)
    tags = {"forecast.source_run": run_id, "forecast.source_model": str(cfg.model_ref)}
    with runs.open_run(cfg.get("run_name") or "specialise", tags=tags) as new_run:
        runs.log_config(cfg, {"source_run": run_id})
        workdir = Path(cfg.out) / new_run
        workdir.mkdir(parents=True, exist_ok=True)
        result = report.evaluate(s, routed, workdir)
        report.log(s, routed, result)
    print(runs.footer(cfg.logger.tracking_uri, experiment_id, new_run).splitlines()[0])
    print(report.summary(result))
    return 0


def setup(cfg: DictConfig, run_id: str) -> Setup:
    from forecast.tracking import runs
    from forecast.training.train import build_data

    full_cfg = runs.stored_config(run_id)
    if cfg.data.get("store"):
        full_cfg.data.store = str(cfg.data.store)
    full = runs.load_model(run_id).eval()
    dm = build_data(full_cfg)
    splits = {name: accuracy.split(dm, name) for name in ("train", "val", "test")}
    s = Setup(cfg, full, full_cfg, run_id, runs.load_predict_state(run_id), dm, splits)
    s.full_scores = {name: accuracy.torch_scores(full, split) for name, split in splits.items()}
    s.teacher_train = torch.from_numpy(s.full_scores["train"]).float()  # (N_train,) in anchor order
    first = getattr(full, "members", [full])[0]  # a seed ensemble's members share their config
    print(f"full model {run_id}: {type(first.backbone).__name__}, modalities {list(first.encoders)}, "
          f"{sum(p.numel() for p in full.parameters()):,} parameters, test IC "
          f"{accuracy.val_ic(splits['test'], s.full_scores['test']):.4f}")
    return s


def candidates(slices: list, batches: list[dict]) -> torch.Tensor:
    """(N,) the first of `slices` holding each request, FALLBACK where none does."""
    out = []
    for b in batches:
        cand = torch.full((len(b["x"]),), FALLBACK, dtype=torch.long)
        for k in reversed(range(len(slices))):
            cand = torch.where(slices[k](b), torch.full_like(cand, k), cand)
        out.append(cand)
    return torch.cat(out)


def build_specialists(s: Setup) -> tuple[dict, list]:
    """{name: trained specialist} and their fitted slices, in routing order; slices holding no request
    of the training period are reported and skipped."""
    kept, slices, features = {}, [], s.state["features"]
    for name, spec in s.cfg.specialists.items():
        sl = instantiate(spec.slice)
        sl.fit(s.full, s.splits["train"].batches, features)
        served = candidates([*slices, sl], s.splits["train"].batches) == len(slices)  # the requests it would serve
        mine = {split: candidates([sl], s.splits[split].batches) == 0 for split in ("train", "val")}  # its slice
        if not served.any():
            print(f"specialist {name}: its slice ({type(sl).__name__}) holds no request of the training period "
                  "not taken by an earlier specialist; skipped")
            continue
        print(f"specialist {name}: serves {served.float().mean():.1%} of the training requests; distilled on "
              f"its slice's {int(mine['train'].sum()):,} training and {int(mine['val'].sum()):,} validation requests")
        kept[name] = train_specialist(s, spec, mine)
        slices.append(sl)
    if not kept:
        raise UserError(f"specialists: none of {list(s.cfg.specialists)} holds a request of the training period")
    return kept, slices


def student_config(full_cfg: DictConfig, drop: list[str]) -> DictConfig:
    """The full model's config without the modalities in `drop`."""
    cfg = copy.deepcopy(full_cfg)
    modalities = [m for m in cfg.modalities if m not in set(drop)]
    if not modalities:
        raise UserError(f"specialists: dropping {drop} leaves no modality")
    cfg.modalities = modalities
    cfg.model.modalities = modalities
    return cfg


def train_specialist(s: Setup, spec: DictConfig, mine: dict[str, torch.Tensor]):
    """A student distilled from the full model on the requests in `mine` (train and val masks)."""
    cfg = student_config(s.full_cfg, list(spec.get("drop") or []))
    with distill.blended(s.dm, s.teacher_train, float(s.cfg.alpha)), sliced(s.dm, mine):
        model = distill.student(cfg, s.dm, spec.get("width"), spec.get("depth"), spec.get("backbone"))
        distill.train(model, s.dm, cfg, int(s.cfg.epochs), [])
    return model.cpu().eval()


def dense_student(s: Setup, width: int):
    """One student of the full model's modalities on every training request."""
    with distill.blended(s.dm, s.teacher_train, float(s.cfg.alpha)):
        model = distill.student(s.full_cfg, s.dm, width, int(s.cfg.dense.depth), None)
        distill.train(model, s.dm, s.full_cfg, int(s.cfg.epochs), [])
    return model.cpu().eval()


@contextlib.contextmanager
def sliced(dm, masks: dict[str, torch.Tensor]):
    """dm's split anchors cut to `masks` (split -> (N_split,) bool) while inside."""
    saved = dict(dm.anchors)
    for split, mask in masks.items():
        dm.anchors[split] = saved[split][mask]
    try:
        yield dm
    finally:
        dm.anchors.update(saved)


def fit_router(s: Setup, specialists: dict, slices: list) -> Router:
    """The router of conf/router/ with the fitted slices, one gate per specialist (fitted on validation)
    and the input range of the training windows; an `auto` threshold chosen on validation."""
    router = instantiate(s.cfg.router)
    val = s.splits["val"]
    phi = torch.cat([cheap_features(b) for b in val.batches])  # (N_val, C)
    cand = candidates(slices, val.batches)  # (N_val,)
    scores = [accuracy.torch_scores(m, val) for m in specialists.values()]
    tol = router.tolerance * float(s.full_scores["val"].std())  # "close", in the full model's forecast units
    gates = [fit_gate(phi[cand == k], np.abs(scores[k] - s.full_scores["val"])[(cand == k).numpy()], tol)
             for k in range(len(scores))]
    train_phi = torch.cat([cheap_features(b) for b in s.splits["train"].batches])
    bound = torch.quantile(train_phi[:, -2].double(), router.range_quantile).item()  # max |feature| of a window
    router.attach(slices, gates, bound)
    if router.auto:
        router.threshold = torch.tensor(choose_threshold(s, router, scores))
    return router


def fit_gate(phi: torch.Tensor, err: np.ndarray, tol: float) -> torch.nn.Linear:
    """A logistic regression of `err <= tol` (the specialist stays close to the full model) on
    standardised cheap features, folded into one Linear(C, 1) on the raw features."""
    from sklearn.linear_model import LogisticRegression

    gate = torch.nn.Linear(phi.shape[1], 1).double()
    close = err <= tol
    with torch.no_grad():
        gate.weight.zero_()
        if len(close) < 20 or close.all() or not close.any():  # nothing to learn: the base rate
            rate = float(np.clip(close.mean() if len(close) else 0.5, 0.01, 0.99))
            gate.bias.fill_(float(np.log(rate / (1 - rate))))
            return gate.float()
        z = phi.double().numpy()
        mean, std = z.mean(0), z.std(0) + 1e-9
        fit = LogisticRegression(max_iter=1000).fit((z - mean) / std, close)
        gate.weight.copy_(torch.from_numpy(fit.coef_ / std))
        gate.bias.fill_(float(fit.intercept_[0] - (fit.coef_[0] * mean / std).sum()))
    return gate.float()


def routing(router: Router, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) candidates and (N,) gate probabilities of every request of `batches`."""
    with torch.no_grad():
        pairs = [router.candidates(b) for b in batches]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def routed_scores(full: np.ndarray, specs: list[np.ndarray], route: torch.Tensor) -> np.ndarray:
    """The routed forecasts, from every model's forecasts of every request and the routes."""
    out = full.copy()
    for k, scores in enumerate(specs):
        mask = (route == k).numpy()
        out[mask] = scores[mask]
    return out


def choose_threshold(s: Setup, router: Router, scores: list[np.ndarray]) -> float:
    """The lowest threshold (most requests served by specialists) whose routed validation forecasts
    correlate with the full model's at least `min_corr` and lose at most `max_ic_drop` of its IC."""
    val, full = s.splits["val"], s.full_scores["val"]
    cand, conf = routing(router, val.batches)
    full_ic = accuracy.val_ic(val, full)
    for t in np.round(np.linspace(0.01, 0.99, 99), 2):
        route = route_at(cand, conf, float(t))
        mixed = routed_scores(full, scores, route)
        corr = float(np.corrcoef(mixed, full)[0, 1])
        if corr >= router.min_corr and accuracy.val_ic(val, mixed) >= full_ic - router.max_ic_drop:
            print(f"router threshold {t:.2f} (chosen on validation): {(route >= 0).float().mean():.1%} of validation "
                  f"requests served by specialists, correlation {corr:.4f} with the full model")
            return float(t)
    print("router threshold: no threshold meets min_corr and max_ic_drop on validation; 0.99")
    return 0.99
