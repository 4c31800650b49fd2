"""The search: candidate architectures from least to most compressed, each exported to ONNX and
measured as fp32 and as int8, judged against the device's budget on the validation split.

Rungs, in order: the teacher itself; the teacher with a share of its feed-forward channels pruned
(torch-pruning) and fine-tuned by distillation; then each distilled student (narrower, shallower or
another backbone), alone and pruned. Each rung is measured with and without int8 weights, so every
combination of the three techniques is on the table. The search stops after the first rung where a
candidate meets every budget (a later rung compresses more and is expected to cost accuracy), unless
`search.exhaustive`; the Pareto front (size, p95 latency, validation IC) is kept over what was measured.
Trained models are cached per teacher run and recipe, so compressing the same teacher for another
device only re-measures.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from forecast.compress import accuracy, distill, prune
from forecast.compress.export import export, exportable, parity
from forecast.compress.flops import flops_per_forecast
from forecast.compress.latency import measure
from forecast.compress.quantize import int8 as quantize_int8


@dataclass
class Recipe:
    kind: str  # teacher | prune | student
    rung: int
    width: int | None = None
    depth: int | None = None
    backbone: str | None = None
    ratio: float = 0.0  # feed-forward channels pruned
    epochs: int = 0  # training epochs the recipe costs

    @property
    def name(self) -> str:
        parts = {"teacher": ["teacher"], "prune": ["teacher"], "student": [f"student w{self.width} d{self.depth}"
                                                                   + (f" {self.backbone}" if self.backbone else "")]}
        parts = parts[self.kind] + ([f"prune {self.ratio:g}"] if self.ratio else [])
        return " + ".join(parts)


@dataclass
class Candidate:
    recipe: Recipe
    int8: bool
    path: Path
    bytes: int
    params: int
    flops: float
    parity: float  # max |onnx - torch fp32 model| over two validation batches (scaled units)
    latency: dict  # p50_ms, p95_ms, mean_ms at the device's threads
    val_ic: float
    test: dict  # accuracy.test_metrics
    misses: list[str] = field(default_factory=list)
    pareto: bool = False

    @property
    def name(self) -> str:
        return self.recipe.name + (" + int8" if self.int8 else "")

    @property
    def meets(self) -> bool:
        return not self.misses


@dataclass
class Reference:
    """The teacher as the user runs it today (torch, fp32): what every ratio is against."""
    bytes: int  # its fp32 ONNX file (the same format as every candidate)
    latency: dict  # torch, at the device's threads
    val_ic: float
    val_scores: object
    test_scores: object
    test: dict


def plan(search) -> list[Recipe]:
    recipes = [Recipe("teacher", 0)]
    recipes += [Recipe("prune", 1 + i, ratio=float(r), epochs=int(search.finetune_epochs))
                for i, r in enumerate(sorted(search.prune or []))]
    rung = len(recipes)
    for i, s in enumerate(search.students or []):
        base = dict(width=s.get("width"), depth=s.get("depth"), backbone=s.get("backbone"))
        recipes.append(Recipe("student", rung + i, **base, epochs=int(search.epochs)))
        if search.get("prune_students"):
            recipes.append(Recipe("student", rung + i, **base, ratio=float(search.prune_students),
                                  epochs=int(search.finetune_epochs)))  # from the student just trained
    return recipes


def units(recipe: Recipe, int8: bool) -> int:
    """Progress units of a recipe: one per training epoch, one per measured variant."""
    return recipe.epochs + (2 if int8 else 1)


class Ticks(Callback):
    """Advance the search's progress bar by one per training epoch."""

    def __init__(self, bar):
        self.bar, self.done = bar, 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.bar.update(1)
        self.done += 1


def build(ctx, recipe: Recipe):
    """The torch model of a recipe: the teacher, or a pruned / distilled model (trained, cached).
    A pruned student starts from its unpruned student, trained just before it in the same rung."""
    if recipe.kind == "teacher":
        return ctx.teacher
    key = _key(ctx, recipe)
    cached = ctx.cache / f"{key}.pt" if ctx.cache else None
    if key in ctx.memo:
        return ctx.memo[key]
    if cached is not None and cached.exists():
        ctx.bar.update(recipe.epochs)
        ctx.memo[key] = torch.load(cached, map_location="cpu", weights_only=False)
        return ctx.memo[key]
    ticks, search = Ticks(ctx.bar), ctx.cfg.search
    with distill.blended(ctx.dm, ctx.teacher_train, float(search.alpha)):
        if recipe.kind == "prune" or recipe.ratio:
            base = ctx.teacher if recipe.kind == "prune" else build(ctx, Recipe(
                "student", recipe.rung, recipe.width, recipe.depth, recipe.backbone, epochs=int(search.epochs)))
            model = prune.prune(copy.deepcopy(base), recipe.ratio)
            distill.train(model, ctx.dm, ctx.teacher_cfg, int(search.finetune_epochs), [ticks])
        else:
            model = distill.student(ctx.teacher_cfg, ctx.dm, recipe.width, recipe.depth, recipe.backbone)
            distill.train(model, ctx.dm, ctx.teacher_cfg, int(search.epochs), [ticks])
    ctx.bar.update(recipe.epochs - ticks.done)  # early stopping ends some trainings sooner
    model = ctx.memo[key] = model.cpu().eval()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, cached)
    return model


def _key(ctx, recipe: Recipe) -> str:
    s = ctx.cfg.search
    what = {k: v for k, v in recipe.__dict__.items() if k != "rung"}
    spec = dict(r=what, alpha=float(s.alpha), epochs=int(s.epochs), ft=int(s.finetune_epochs),
                teacher=ctx.teacher_run, trainer=str(ctx.teacher_cfg.trainer), data=str(ctx.teacher_cfg.data))
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{recipe.name.replace(' + ', '_').replace(' ', '')}-{digest}"


def measure_candidate(ctx, recipe: Recipe, model, int8: bool) -> Candidate:
    """Export (and quantise), then size, FLOPs, parity, latency and accuracy of one variant."""
    slug = recipe.name.replace(" + ", "_").replace(" ", "")
    path = ctx.workdir / f"{slug}.onnx"
    if not path.exists():
        export(model, ctx.val.batches[0], path, ctx.state)
    if int8:
        path = quantize_int8(path, ctx.workdir / f"{slug}_int8.onnx")
    lat = ctx.cfg.latency
    c = Candidate(recipe, int8, path, path.stat().st_size, prune.n_params(model),
                  flops_per_forecast(model, ctx.val.batches[0]), parity(model, path, ctx.val.batches[:2]),
                  measure("onnx", path, ctx.inputs, ctx.device.threads, int(lat.repeats), int(lat.warmup)),
                  accuracy.val_ic(ctx.val, accuracy.onnx_scores(path, ctx.val)), {})
    c.test = accuracy.test_metrics(ctx.test, accuracy.onnx_scores(path, ctx.test), ctx.ref.test_scores)
    c.misses = judge(ctx, c)
    return c


def judge(ctx, c: Candidate) -> list[str]:
    """The budgets a candidate misses, each as a short phrase (empty: it meets them all)."""
    d, b, ref, misses = ctx.device, ctx.cfg.budget, ctx.ref, []
    if d.size_mb and c.bytes > d.size_mb * 1e6:
        misses.append(f"size {c.bytes / 1e6:.2f} MB > {d.size_mb:g} MB")
    if d.latency_ms and c.latency["p95_ms"] > d.latency_ms:
        misses.append(f"p95 {c.latency['p95_ms']:.2f} ms > {d.latency_ms:g} ms")
    if b.size_ratio and ref.bytes / c.bytes < b.size_ratio:
        misses.append(f"{ref.bytes / c.bytes:.2f}x smaller < {b.size_ratio:g}x")
    if b.speedup and ref.latency["p50_ms"] / c.latency["p50_ms"] < b.speedup:
        misses.append(f"{ref.latency['p50_ms'] / c.latency['p50_ms']:.2f}x faster < {b.speedup:g}x")
    # keep ic_ratio of the teacher's val IC; a teacher with a negative one: lose at most (1 - ic_ratio) of it
    floor = ref.val_ic - (1 - b.ic_ratio) * abs(ref.val_ic) if b.ic_ratio else None
    if floor is not None and not c.val_ic >= floor:
        misses.append(f"val IC {c.val_ic:.4f} < {floor:.4f} ({b.ic_ratio:.0%} of the teacher's {ref.val_ic:.4f})")
    return misses


def run(ctx) -> list[Candidate]:
    """Every rung in order until one meets the budget (or all, with search.exhaustive)."""
    from tqdm import tqdm

    int8 = bool(ctx.cfg.search.int8)
    recipes = plan(ctx.cfg.search)
    done: list[Candidate] = []
    with tqdm(total=sum(units(r, int8) for r in recipes), desc="compress", unit="step",
              dynamic_ncols=True, disable=not ctx.cfg.progress) as bar:
        ctx.bar = bar
        for rung in sorted({r.rung for r in recipes}):
            for recipe in [r for r in recipes if r.rung == rung]:
                done += _variants(ctx, recipe, int8, bar)
            if any(c.meets for c in done) and not ctx.cfg.search.exhaustive:
                left = sum(units(r, int8) for r in recipes if r.rung > rung)
                bar.total -= left
                skipped = sum(r.rung > rung for r in recipes)
                bar.write(f"budget met by {' / '.join(r.name for r in recipes if r.rung == rung)}: stopping; "
                          f"{skipped} more compressed recipes not tried (search.exhaustive=true tries them)")
                break
    mark_pareto(done)
    return done


def _variants(ctx, recipe: Recipe, int8: bool, bar) -> list[Candidate]:
    model = build(ctx, recipe)
    if exportable(model) is None:
        bar.write(f"{recipe.name}: {type(model.backbone).__name__} declares no EXPORTABLE; skipped")
        bar.update(1 + int8)
        return []
    out = []
    for q in [False, True][: 1 + int8]:
        c = measure_candidate(ctx, recipe, model, q)
        bar.update(1)
        bar.write(line(ctx, c))
        out.append(c)
    return out


def line(ctx, c: Candidate) -> str:
    ref = ctx.ref
    return (f"{c.name:<34} {c.bytes / 1e3:9.1f} kB {ref.bytes / c.bytes:5.2f}x  p50 {c.latency['p50_ms']:7.2f} ms "
            f"{ref.latency['p50_ms'] / c.latency['p50_ms']:5.2f}x  val IC {c.val_ic:.4f}  "
            + ("meets the budget" if c.meets else "misses: " + "; ".join(c.misses)))


def mark_pareto(cands: list[Candidate]) -> None:
    """Pareto front over (bytes, p95 latency) lower and validation IC higher."""
    def key(c):
        return c.bytes, c.latency["p95_ms"], -c.val_ic

    for c in cands:
        c.pareto = not any(all(a <= b for a, b in zip(key(o), key(c))) and key(o) != key(c) for o in cands)


def pick(cands: list[Candidate]) -> Candidate | None:
    """The candidate meeting every budget with the highest validation IC (then the lowest p95);
    None when none meets it."""
    met = [c for c in cands if c.meets]
    return max(met, key=lambda c: (c.val_ic, -c.latency["p95_ms"])) if met else None


def closest(cands: list[Candidate]) -> Candidate:
    """When nothing meets the budget: the one missing the fewest budgets, then the best validation IC."""
    return min(cands, key=lambda c: (len(c.misses), -c.val_ic))
