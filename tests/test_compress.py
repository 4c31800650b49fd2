"""`compress` end to end on a tiny registered teacher (the one test_predict trains): the last line,
the ONNX file and its MLflow run tagged with the teacher, a registry alias named for the device,
`predict model=<compressed run>` forecasting with it; and a budget nothing meets (exit 1, the closest
candidate reported, nothing registered)."""
import re
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_predict import rows, run_predict, trained_model

pytestmark = pytest.mark.slow
LAST = re.compile(r"compressed=(\S+) run_id=(\w+) candidate=(\S+) size_ratio=([\d.]+) speedup=([\d.]+) "
                  r"ic_ratio=(\S+) device=(\w+) met=(true|false)")
QUICK = ["search.prune=[]", "search.students=[]", "latency.repeats=5", "latency.warmup=1", "progress=false",
         "budget.speedup=null", "budget.ic_ratio=null"]


def compress(capsys, model, tmp_path, *args) -> tuple[int, list[str]]:
    from hydra.core.global_hydra import GlobalHydra

    from forecast.__main__ import main

    argv, code = list(sys.argv), 0
    try:
        main(["compress", f"model={model['run_id']}", f"logger.tracking_uri={model['tracking_uri']}",
              f"out={tmp_path}/out", "cache=null", *QUICK, *args])
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
        sys.argv = argv
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model(tmp_path_factory)


def test_compress_logs_registers_and_predict_uses_it(model, tmp_path, capsys):
    code, out = compress(capsys, model, tmp_path, "device=auto", "budget.size_ratio=1.2")  # no absolute budget
    assert code == 0, out[-5:]
    path, run_id, pick, size_ratio, _, _, device, met = LAST.fullmatch(out[-1]).groups()
    assert device == "auto" and met == "true" and float(size_ratio) >= 1.2 and pick.endswith("int8")
    client = MlflowClient(model["tracking_uri"])
    run = client.get_run(run_id)
    assert run.data.tags["forecast.source_run"] == model["run_id"]
    assert run.data.tags["mlflow.note.content"].startswith("**compress**: ")  # the verdict on the Overview tab
    assert run.data.metrics["compress/size_ratio"] == pytest.approx(float(size_ratio), rel=1e-2)
    artifacts = {a.path for a in client.list_artifacts(run_id, "compressed")}
    assert artifacts == {"compressed/model.onnx"}
    assert client.get_model_version_by_alias("forecast_compressed", "auto").run_id == run_id
    assert any("| teacher + int8 |" in line for line in out)  # the table, one row per candidate
    teacher_db, small_db = tmp_path / "t.db", tmp_path / "s.db"
    days = ["catch_up=true", "since=2018-11-01", "date=2018-12-27"]
    assert run_predict(capsys, model, teacher_db, f"model={model['run_id']}", *days)[0] == 0
    assert run_predict(capsys, model, small_db, f"model={run_id}", *days)[0] == 0
    teacher, small = rows(teacher_db), rows(small_db)
    assert small.height == teacher.height > 20
    assert small["run_id"].unique().to_list() == [run_id]
    corr = np.corrcoef(teacher["forecast"].to_numpy(), small["forecast"].to_numpy())[0, 1]
    assert corr > 0.95, corr  # int8 weights: close to the teacher, not equal


def test_a_budget_nothing_meets_reports_the_closest_and_registers_nothing(model, tmp_path, capsys):
    client = MlflowClient(model["tracking_uri"])
    before = len(client.search_model_versions("name = 'forecast_compressed'"))
    code, out = compress(capsys, model, tmp_path, "device=edge_box", "budget.size_ratio=1000")
    assert code == 1
    path, run_id, pick, *_, met = LAST.fullmatch(out[-1]).groups()
    assert path == "none" and met == "false"
    assert any(line.startswith("nothing meets the budget; the closest is") for line in out)
    assert len(client.search_model_versions("name = 'forecast_compressed'")) == before
    assert client.get_run(run_id).data.tags["forecast.compress.met"] == "false"
