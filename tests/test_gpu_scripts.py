"""The GPU-only benchmark scripts on a CPU machine: they parse their arguments, refuse cleanly without CUDA, and the
tuner's candidate configs are all valid configs (so a GPU run does not spend device time on a typo)."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_la2_shapes  # noqa: E402
import profile_la2  # noqa: E402
import tune_la2  # noqa: E402

if torch.cuda.is_available():
    pytest.skip("checks the CPU behaviour of GPU scripts", allow_module_level=True)


def test_scripts_refuse_without_cuda(capsys):
    assert bench_la2_shapes.main(["--shapes", "1x64x1x16x16"]) == 1
    assert profile_la2.main(["--shapes", "1x64x1x16x16"]) == 1
    assert tune_la2.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err


@pytest.mark.parametrize("script", [bench_la2_shapes, profile_la2])
def test_bad_shape_is_an_argument_error(script):
    with pytest.raises(SystemExit):
        script.main(["--shapes", "1x64x16"])


@pytest.mark.parametrize("phase", ["fwd", "bwd"])
def test_tune_candidates_are_valid_configs(phase):
    from tnl_kernels.la2_config import ALGOS, get_config

    for cand in (tune_la2.FWD if phase == "fwd" else tune_la2.BWD):
        assert cand.get("ALGO") in ALGOS, cand  # explicit: 16-bit inputs default to the fused walk
        cfg = get_config(128, 128, torch.bfloat16, 16, {phase: cand})
        assert cfg[phase]["ALGO"] == cand["ALGO"] and all(cfg[phase][k] == v for k, v in cand.items())


def test_shape_bench_variants():
    """--algos items: the two algorithms, the table as it stands, and NAME=JSON overrides; anything else is an
    argument error before any GPU work."""
    assert bench_la2_shapes.variant("default") == ("default", None)
    assert bench_la2_shapes.variant("chunk")[1] == {"fwd": {"ALGO": "chunk"}, "bwd": {"ALGO": "chunk"}}
    assert bench_la2_shapes.variant('ov={"bwd": {"OVERLAP": true}}') == ("ov", {"bwd": {"OVERLAP": True}})
    for bad in ("fast", "x={bad json", "x=[1]", "={}", 'x={"OVERLAP": true}'):
        with pytest.raises(ValueError):
            bench_la2_shapes.variant(bad)
    with pytest.raises(SystemExit):
        bench_la2_shapes.main(["--shapes", "1x64x1x16x16", "--algos", "default;x=[1]"])
    # one JSON variant holding commas parses (then the script stops: no CUDA here)
    both = 'x={"fwd": {"ALGO": "fused"}, "bwd": {"ALGO": "fused"}}'
    assert bench_la2_shapes.main(["--shapes", "1x64x1x16x16", "--algos", both]) == 1


def test_tune_log_summarises_each_shape():
    """The tuning log's table: per shape the best forward / forward+backward time and the config kept (or why not)."""
    log = [{"key": "bfloat16/D128/E128/few", "T": 65536, "B": 1, "cfg": {}, "backward": False, "ms": 2.0},
           {"key": "bfloat16/D128/E128/few", "T": 65536, "B": 1, "cfg": {}, "backward": False, "ms": 1.5},
           {"key": "bfloat16/D128/E128/few", "T": 65536, "B": 1, "cfg": {}, "backward": True, "ms": 4.25},
           {"key": "bfloat16/D128/E128/mid", "T": 16384, "B": 4, "cfg": {}, "backward": True, "ms": 3.0}]
    kept = [{"key": "bfloat16/D128/E128/few", "T": 65536, "best": {"fwd": {"ALGO": "fused"}}},
            {"key": "bfloat16/D128/E128/mid", "T": 16384, "best": None}]
    facts = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "t", "triton": "r", "command": "python benchmarks/tune_la2.py"}
    lines = tune_la2.log_markdown(facts, Path("la2_tuned.json"), kept, log)
    assert lines[0] == "# LA2 block-size tuning (NVIDIA H100 80GB HBM3)" and "4 timings" in lines[2]
    assert '| bfloat16/D128/E128/few T=65536 | 1.500 | 4.250 | `{"fwd": {"ALGO": "fused"}}` |' in lines
    assert "| bfloat16/D128/E128/mid T=16384 | - | 3.000 | no (disagreed with the heuristic) |" in lines
