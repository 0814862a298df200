"""configs/experiment/repro_*.yaml: the paper's optimizer setting, TNL by default with LLaMA one override away, and
repro_small's two models matched in size and trained on equal tokens."""

import pytest

from tnl.config import compose, to_dict
from tnl.models import count_parameters


@pytest.mark.parametrize("name", ["repro_385m", "repro_small"])
def test_paper_setting(name):
    tnl = compose([f"experiment={name}"])
    llama = compose([f"experiment={name}", "model=llama_385m"])
    assert tnl.model.arch == "tnl" and llama.model.arch == "llama"
    for cfg in (tnl, llama):
        assert cfg.trainer.seq_len == 2048 and list(cfg.optim.betas) == [0.9, 0.95]
        assert cfg.optim.weight_decay == 0.1 and cfg.optim.min_lr_ratio < 1 and cfg.data.name == "gutenberg"
        assert cfg.model.vocab_size >= cfg.data.vocab_size
    # equal tokens: everything but the model group is the same
    assert {k: v for k, v in to_dict(tnl).items() if k != "model"} == {
        k: v for k, v in to_dict(llama).items() if k != "model"}
    a, b = count_parameters(to_dict(tnl.model)), count_parameters(to_dict(llama.model))
    assert abs(a - b) / a < 0.01, (a, b)
    if name == "repro_small":
        assert 150e6 < a < 250e6 and tnl.model.num_hidden_layers == llama.model.num_hidden_layers == 12
