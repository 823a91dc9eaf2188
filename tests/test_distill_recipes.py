"""``--recipe``: named presets of the reference code's hyperparameters, under the TOML file and the flags."""

import pytest
import torch

from distill.checkpoint import load_checkpoint
from distill.config import RECIPES, Config, parse_config
from distill.datasets import load_dataset
from distill.run import main
from distill.trainer import build_model, parameter_groups

QUICK = ["--threads", "1", "--progress", "off", "--train-subset", "128", "--test-subset", "64", "--batch-size", "32"]


def test_recipes_set_their_options_and_given_flags_win(tmp_path):
    assert Config().recipe == "default" and RECIPES["default"] == {}
    ratebp = parse_config(["--recipe", "ratebp"])
    assert (ratebp.neuron_tau, ratebp.grad_clip, ratebp.weight_decay_scope) == (1.25, 0.0, "weights")
    assert (ratebp.rate_grad_div_t, ratebp.tau, ratebp.alpha) == (True, 3.0, 0.3)
    assert parse_config(["--recipe", "ratebp", "--tau", "4"]).tau == 4.0
    path = tmp_path / "run.toml"
    path.write_text('recipe = "ckdsnn"\ngrad-clip = 1.0\n')
    ckdsnn = parse_config(["--config", str(path)])
    assert (ckdsnn.samd_norm, ckdsnn.nld_form, ckdsnn.noise_scale, ckdsnn.map_tau) == ("minmax", "mixture", 0.1, 2.0)
    assert (ckdsnn.hard_reset, ckdsnn.detach_reset, ckdsnn.surrogate) == (True, False, "triangle")
    assert ckdsnn.grad_clip == 1.0  # the file wins over the recipe
    with pytest.raises(SystemExit):
        parse_config(["--recipe", "esd"])


def test_the_ckdsnn_neuron_reaches_the_student():
    cfg = parse_config(["--recipe", "ckdsnn"])
    lif = next(m for m in build_model(cfg, "snn", load_dataset("digits", "test")).modules() if hasattr(m, "options"))
    assert (lif.options.v_reset, lif.options.detach_reset, lif.options.surrogate) == (0.0, False, "triangle")


def test_weight_decay_on_weights_only():
    cfg = parse_config(["--weight-decay-scope", "weights"])
    net = build_model(cfg, "snn", load_dataset("digits", "test"))
    decayed, free = parameter_groups(cfg, list(net.parameters()))
    names = {id(p): n for n, p in net.named_parameters()}
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert all(n.endswith("weight") and ".bn" not in n for n in map(names.get, map(id, decayed["params"])))
    assert any(".bn" in n for n in map(names.get, map(id, free["params"])))
    assert any(n.endswith("bias") for n in map(names.get, map(id, free["params"])))


def test_rate_gradient_divided_by_t_is_sgd_at_lr_over_t(tmp_path, seed):
    """Without weight decay or clipping, SGD on gradient / T is SGD on the gradient at lr / T."""
    common = [*QUICK, "--method", "direct", "--teacher-epochs", "1", "--epochs", "1", "--max-steps", "3"]
    common += ["--weight-decay", "0", "--grad-clip", "0", "--time-steps", "4", "--train", "rate"]
    main([*common, "--rate-grad-div-t", "--lr", "0.2", "--out", str(tmp_path / "a")])
    main([*common, "--lr", "0.05", "--out", str(tmp_path / "b")])
    a, b = (load_checkpoint(tmp_path / d / "student.pt")["model"] for d in ("a", "b"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("recipe, method", [("ratebp", "blockwise"), ("ckdsnn", "ckd")])
def test_a_run_with_each_recipe(tmp_path, recipe, method):
    out = tmp_path / recipe
    results = main([*QUICK, "--recipe", recipe, "--method", method, "--teacher-epochs", "1", "--epochs", "1",
                    "--out", str(out)])  # fmt: skip
    assert 0.0 <= results["student_acc"] <= 1.0
    assert f'recipe = "{recipe}"' in (out / "config.toml").read_text()
