"""forecast's Optuna sweeper without a server: Hydra's sweep syntax becomes the right Optuna
distributions, every value a trial gets parses back to itself as an override, a study in a database
is continued by the next sweep of the same name, and a trial whose sweep died is failed as stale."""
import os
import time

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from forecast.tracking.optuna_sweeper import OptunaSweeper, fail_stale, heartbeats, overrides, search_space, trial_env
from forecast.tracking.sweep import TRIAL_ENV, trial_tags

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_sweep_syntax_becomes_optuna_distributions():
    params = {"lr": "tag(log, interval(1e-4, 1e-2))", "d": "choice(16, 32, 64)", "w": "range(8, 33, 8)",
              "p": "interval(0, 0.3)", "n": "tag(int, interval(1, 8))", "kept": "choice(1, 2)"}
    space, fixed = search_space(params, ["model/backbone=lstm,mamba", "kept=3", "+extra=x"])
    assert space["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["d"] == CategoricalDistribution([16, 32, 64])
    assert space["w"] == IntDistribution(8, 32, step=8)  # Hydra's stop is exclusive, Optuna's high inclusive
    assert space["p"] == FloatDistribution(0.0, 0.3)
    assert space["n"] == IntDistribution(1, 8)
    assert space["model/backbone"] == CategoricalDistribution(["lstm", "mamba"])
    assert "kept" not in space and fixed == ["kept=3", "+extra=x"]  # the command line replaces the config's sweep


values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20))


@settings(max_examples=200, deadline=None)
@given(values)
def test_every_trial_value_parses_back_to_itself(value):
    override = OverridesParser.create().parse_override(overrides({"key": value})[0])
    assert override.value() == value and type(override.value()) is type(value)


@settings(max_examples=50, deadline=None)
@given(study=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20),
       number=st.integers(0, 10**6))
def test_the_trial_environment_names_study_and_trial(study, number):
    override = OverridesParser.create().parse_override(trial_env(study, number))
    assert override.get_key_element() == f"++hydra.job.env_set.{TRIAL_ENV}"
    os.environ[TRIAL_ENV] = override.value()
    try:
        assert trial_tags() == {"forecast.study": study, "forecast.trial": str(number)}
    finally:
        del os.environ[TRIAL_ENV]


def test_no_trial_tags_outside_a_trial(monkeypatch):
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert trial_tags() == {}


def _study(url, **kwargs):
    sweeper = OptunaSweeper(study_name="s", storage=url, **kwargs)
    return sweeper._storage(), optuna.create_study(study_name="s", storage=sweeper._storage(), load_if_exists=True)


def test_a_study_in_a_database_is_continued_and_a_dead_sweeps_trial_is_failed(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage, study = _study(url, heartbeat_interval=1, grace_period=2)
    for x in (1.0, 2.0):
        trial = study.ask({"x": FloatDistribution(0, 10)})
        study.tell(trial, x)
    orphan = study.ask({"x": FloatDistribution(0, 10)})
    with heartbeats(storage, [orphan._trial_id], 1):
        time.sleep(0.1)  # its sweep "dies" here: no heartbeat after this one
    alive = study.ask({"x": FloatDistribution(0, 10)})
    with heartbeats(storage, [alive._trial_id], 1):
        time.sleep(3.5)  # past the grace period of the orphan; the live trial keeps beating
        _, again = _study(url, heartbeat_interval=1, grace_period=2)
        assert len(again.trials) == 4  # the second sweep finds everything
        assert fail_stale(again) == [orphan.number]
    states = {t.number: t.state for t in again.get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.FAIL, 3: TrialState.RUNNING}


def test_the_sampler_seed_moves_on_in_a_continued_study():
    sweeper = OptunaSweeper(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 7})
    space = {"x": FloatDistribution(0, 1)}
    first = [optuna.create_study(sampler=sweeper._sampler(0)).ask(space).params["x"] for _ in range(2)]
    assert first[0] == first[1]  # the same seed proposes the same first trial
    assert optuna.create_study(sampler=sweeper._sampler(3)).ask(space).params["x"] != first[0]


@pytest.mark.parametrize("bad", ["range(5, 5)"])
def test_an_empty_range_is_an_error(bad):
    with pytest.raises(ValueError, match="empty"):
        search_space({"k": bad}, [])
