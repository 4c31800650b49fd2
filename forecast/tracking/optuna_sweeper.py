"""The sweeper of `hparams_search=optuna`: Optuna's ask/tell loop, the trials run by whichever Hydra
launcher is selected (in-process, joblib, submitit local or SLURM), the study in a database when
`storage` is set (the server's PostgreSQL: `python -m forecast server` prints the URL).

Why not Hydra's Optuna sweeper plugin: its release, 1.3, pins optuna<3, whose database storage fails
under SQLAlchemy 2 (hydra#2562), so no study could outlive its process; its 1.4 release candidates
would put a pre-release hydra-core and omegaconf under every command of the project. This sweeper
reads the same keys (sampler, direction, study_name, storage, n_trials, n_jobs, params in Hydra's
sweep syntax: choice, range, interval, tag(log|int, ...)) and adds what a lasting, shared study needs:
- a sweep with the name of an existing study continues it, and says how many trials it found;
- each running trial beats a heartbeat, so the next sweep of the study fails the trials of a sweep
  that died (Optuna's `fail_stale_trials`), and their MLflow runs with them;
- each trial's MLflow run is tagged `forecast.study` and `forecast.trial` (its Optuna number);
- a failed trial is told FAIL and the sweep goes on with the next; no trial is left RUNNING.
One objective (the validation loss `train` returns); Hydra's plugin also did multi-objective and grid.
"""
from __future__ import annotations

import contextlib
import math
import re
import threading
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from forecast.tracking.sweep import TRIAL_ENV


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any = None, direction: str = "minimize", study_name: str = "forecast",
                 storage: str | None = None, n_trials: int = 20, n_jobs: int = 1, params: Any = None,
                 heartbeat_interval: int | None = 30, grace_period: int | None = None):
        self.sampler_cfg, self.direction, self.study_name = sampler, direction, study_name
        self.storage_url, self.n_trials, self.n_jobs = storage, n_trials, n_jobs
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _storage(self):
        import optuna

        if not self.storage_url:
            return None
        return optuna.storages.RDBStorage(self.storage_url, heartbeat_interval=self.heartbeat_interval,
                                          grace_period=self.grace_period,
                                          engine_kwargs={"pool_pre_ping": True})  # survives a database restart

    def _sampler(self, n_found: int):
        """The configured sampler; its seed moved on by the trials a continued study holds, so that it
        does not propose the first sweep's trials again (a seeded TPE starts with the same random ones)."""
        cfg = self.sampler_cfg
        if cfg is None:
            return None
        seed = cfg.get("seed")
        return instantiate(cfg, **({"seed": seed + n_found} if seed is not None and n_found else {}))

    def sweep(self, arguments: list[str]) -> list:
        import optuna

        space, fixed = search_space(self.params, arguments)
        storage = self._storage()
        study = optuna.create_study(study_name=self.study_name, storage=storage, direction=self.direction,
                                    load_if_exists=True)
        study.sampler = self._sampler(len(study.trials))
        self._report_found(study)
        returns, failed, left = [], [], self.n_trials
        while left > 0:
            trials = [study.ask(space) for _ in range(min(left, self.n_jobs))]
            batch = [[*overrides(t.params), *fixed, trial_env(self.study_name, t.number)] for t in trials]
            self.validate_batch_is_legal(batch)
            with _told_on_abort(study, trials), heartbeats(storage, [t._trial_id for t in trials],
                                                            self.heartbeat_interval):
                results = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(results)
            failed += [n for n in (_tell(study, t, r) for t, r in zip(trials, results)) if n is not None]
            returns.append(results)
            left -= len(trials)
        self._report_end(study, failed)
        return returns

    def _report_found(self, study) -> None:
        from optuna.trial import TrialState

        where = redact(self.storage_url) if self.storage_url else "memory"
        stale = fail_stale(study) if self.storage_url else []
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        found = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if trials:
            print(f"study {self.study_name}: continuing, {len(trials)} trials found in {where} ({found})", flush=True)
        else:
            print(f"study {self.study_name}: new, in {where}", flush=True)
        if stale:
            print(f"study {self.study_name}: trials {stale} had stopped beating (their sweep died): marked failed, "
                  f"with {mark_stale_runs(self.config, self.study_name, stale)} MLflow runs", flush=True)

    def _report_end(self, study, failed: list[int]) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        summary = {"name": "optuna", "study": self.study_name, "trials": len(study.trials), "failed": failed}
        if complete:
            best = study.best_trial
            summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            print(f"study {self.study_name}: {len(study.trials)} trials; best #{best.number} value={best.value:.6g} "
                  f"{best.params}" + (f"; failed in this sweep: {failed}" if failed else ""), flush=True)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")


# --- the search space: Hydra's sweep syntax -> Optuna distributions ----------------------------------

def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """({key: distribution} of every sweep, the fixed overrides): the config's `params` first, then the
    command line, so a value given on the command line replaces the config's sweep of that key."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    by_key = {o.get_key_element(): o for o in parsed}
    space = {k: distribution(o) for k, o in by_key.items() if o.is_sweep_override()}
    return space, [o.input_line for o in by_key.values() if not o.is_sweep_override()]


def distribution(override):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{override.input_line}: the range is empty")
        if all(isinstance(v, int) for v in values) and value.step > 0 and not value.shuffle:
            return IntDistribution(values[0], values[-1], step=value.step)
        return CategoricalDistribution(values)
    log = "log" in value.tags
    if "int" in value.tags:
        return IntDistribution(int(value.start), int(value.end), log=log)
    return FloatDistribution(value.start, value.end, log=log)


def overrides(params: dict) -> list[str]:
    """A trial's values as overrides that parse back to the same values: a string is quoted unless it
    reads as itself (`mamba` stays, `'0'`, `'true'` and `'a b'` are quoted)."""
    return [f"{k}={encode(v)}" for k, v in params.items()]


def encode(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, str):
        return repr(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", value):
        parsed = OverridesParser.create().parse_override(f"k={value}").value()
        if parsed == value and isinstance(parsed, str):
            return value
    # Hydra's quoted strings: backslashes count only before a quote and at the end, where they are doubled
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"


def trial_env(study_name: str, number: int) -> str:
    """The override that gives the trial's process `FORECAST_TRIAL=<study>/<number>` (Hydra's env_set)."""
    return f"++hydra.job.env_set.{TRIAL_ENV}={encode(f'{study_name}/{number}')}"


# --- telling Optuna; heartbeats; stale trials ---------------------------------------------------------

def _tell(study, trial, result) -> int | None:
    """COMPLETE with the job's value, or FAIL (an exception, a value that is not a finite number);
    returns the trial's number when it failed."""
    from optuna.trial import TrialState

    try:
        value = float(result.return_value)  # raises the job's exception
    except Exception as e:  # noqa: BLE001 - any failure of a trial is that trial's, not the sweep's
        print(f"trial {trial.number} failed: {type(e).__name__}: {e}", flush=True)
        value = math.nan
    if not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
        return trial.number
    study.tell(trial, value)
    return None


@contextlib.contextmanager
def _told_on_abort(study, trials):
    """A launch that ends the sweep (Ctrl-C, a user error in an in-process job) fails its trials first."""
    from optuna.trial import TrialState

    try:
        yield
    except BaseException:
        for t in trials:
            with contextlib.suppress(Exception):
                study.tell(t, state=TrialState.FAIL)
        raise


@contextlib.contextmanager
def heartbeats(storage, trial_ids: list[int], interval: int | None):
    """Record a heartbeat of each trial now and every `interval` seconds while the batch runs. A beat
    that fails (the database restarting) is skipped: the next one retries."""
    if storage is None or not interval:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            for trial_id in trial_ids:
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study) -> list[int]:
    """Numbers of the RUNNING trials whose heartbeat stopped, now FAIL."""
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(running - still)


def mark_stale_runs(config: DictConfig, study_name: str, numbers: list[int]) -> int:
    logger = config.get("logger")
    if not logger or "tracking_uri" not in logger:
        return 0
    from forecast.tracking.sweep import fail_stale_runs

    return fail_stale_runs(logger.tracking_uri, logger.experiment_name, study_name, numbers)


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]+@", r"://\1:***@", url)
