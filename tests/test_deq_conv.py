"""The convolutional DEQ cell (core.models.deq_conv): the cell at a fixed z against loops written out in numpy, the
implicit gradient against backprop through the iterated cell, K stacked models against each model alone (outputs,
implicit gradients, a training epoch), its model names, and the deq flow on 8x8 digits with it."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from core.data.config import DatasetConfig
from core.models.deq_conv import DEQConv2d
from core.models.names import ModelNameError, parse_model_name
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train
from flows.deq import BaselinesConfig, DEQFlowConfig, MonitorConfig, SolverConfig, deq_flow
from reference import assert_same_weights, assert_stacked_deqs_equal_each_alone, toy_data, train_one_by_one

D64 = torch.float64


def hand_cell(z: np.ndarray, x: np.ndarray, p: dict[str, np.ndarray], groups: int = 4, eps: float = 1e-5):
    """f(z, x) = GroupNorm(relu(conv(z) + inj(x))) for one model: z `[B, C, H, W]`, x `[B, Cin, H, W]`, stride 1,
    3x3 cross-correlations with zero padding, written as loops."""
    def conv(a, w):
        padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((a.shape[0], w.shape[0], a.shape[2], a.shape[3]))
        for b in range(a.shape[0]):
            for o in range(w.shape[0]):
                for i in range(a.shape[2]):
                    for j in range(a.shape[3]):
                        out[b, o, i, j] = (padded[b, :, i:i + 3, j:j + 3] * w[o]).sum()
        return out

    pre = np.maximum(conv(z, p["weight"]) + conv(x, p["input_weight"]) + p["bias"][None, :, None, None], 0)
    out = np.empty_like(pre)
    per = pre.shape[1] // groups
    for b in range(pre.shape[0]):
        for g in range(groups):
            block = pre[b, g * per:(g + 1) * per]
            out[b, g * per:(g + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return out * p["norm_weight"][None, :, None, None] + p["norm_bias"][None, :, None, None]


def test_the_cell_at_a_fixed_z_equals_the_loops():
    torch.manual_seed(0)
    layer = DEQConv2d(2, 8).double()
    with torch.no_grad():
        for p in layer.parameters():  # every parameter away from its init, GroupNorm's affine included
            p.copy_(torch.randn_like(p))
        x = torch.randn(3, 2, 4, 5, dtype=D64)
        layer(x)
        z = torch.randn(3, 8, 4, 5, dtype=D64)
        f = layer.stats.cell(z.reshape(1, 3, -1)).reshape(3, 8, 4, 5)
    params = {name: p.detach().numpy() for name, p in layer.named_parameters()}
    np.testing.assert_allclose(f.numpy(), hand_cell(z.numpy(), x.numpy(), params), rtol=1e-10, atol=1e-10)


def tight(model: nn.Sequential) -> nn.Sequential:
    """`model` in float64 with solves tight enough that any two ways of solving agree to ~1e-9."""
    block = model[0].double()
    block.tol, block.max_iter, block.backward_tol, block.backward_max_iter = 1e-11, 200, 1e-11, 200
    return model.double()


def test_the_implicit_gradient_equals_backprop_through_the_iterated_cell():
    model = tight(init_model("deq_conv_c8", (1, 8, 8), 5, 0))
    x, y = torch.randn(4, 1, 8, 8, dtype=D64), torch.randint(0, 5, (4,))
    model(x)
    cell = model[0].stats.cell  # f(., x), attached to the parameters
    z = torch.zeros(1, 4, 8 * 64, dtype=D64)
    for _ in range(60):  # f is a contraction at init: 60 steps meet the fixed point to far below 1e-10
        z = cell(z)
    nn.functional.cross_entropy(model[1:](z.reshape(4, 8, 8, 8)), y).backward()
    unrolled = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert model[0].stats.backward.converged.all()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, unrolled[name], atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("solver, shape", [("anderson", (2, 8, 8)), ("broyden", (1, 16, 16))])
def test_stacked_conv_deqs_equal_each_model_alone(solver, shape):
    """16x16 images take the stride-2 injection (8x8 states); 2 input channels check the injection's groups."""
    models = [tight(init_model("deq_conv_c8", shape, 5, seed)) for seed in (1, 2, 3)]
    for model in models:
        model[0].solver = solver
    x, y = torch.randn(6, *shape, dtype=D64), torch.randint(0, 5, (6,))
    assert_stacked_deqs_equal_each_alone(models, 0, x, y, atol=1e-9, rtol=1e-7)


def test_stacked_conv_deq_training_equals_one_by_one():
    """Model 2 idles through half of the epoch's steps (toy_data's subsets)."""
    toy = toy_data(240, 5)
    x, y, subsets = toy["img"], toy["y"], toy["subsets"]
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, momentum=0.9, schedule="constant")
    models = [init_model("deq_conv_c4", (1, 8, 8), 5, seed) for seed in (1, 2, 3)]
    for model in models:
        model[0].tol, model[0].backward_tol, model[0].max_iter, model[0].backward_max_iter = 1e-6, 1e-6, 60, 60
    ensemble = Ensemble.from_models(models)
    train(ensemble, x, y, subsets, [10, 11, 12], config)
    for k, model in enumerate(models):
        train_one_by_one(model, x, y, subsets[k].nonzero().flatten(), 10 + k, config)
        assert_same_weights(ensemble.model(k), model, atol=1e-4)


def test_conv_deq_names():
    assert parse_model_name("deq_conv_c16").family == "deq_conv" and parse_model_name("deq_conv_c16").width == 16
    for bad in ("deq_conv_c6", "deq_conv_c0", "dct_deq_conv_c8", "subspace2_deq_conv_c8"):
        with pytest.raises(ModelNameError, match=f"unknown model '{bad}'"):
            parse_model_name(bad)
    with pytest.raises(ModelNameError, match=r"model 'deq_conv_c8' needs \[C, H, W\] images, but the dataset's "
                                             r"examples have shape \[1, 40\]"):
        init_model("deq_conv_c8", (1, 40), 10, 0)
    with pytest.raises(ValueError, match="a conv DEQ's channels must be a multiple of 4 \\(its GroupNorm groups\\), "
                                         "not 6"):
        DEQConv2d(1, 6)


CONFIG = DEQFlowConfig(dataset=DatasetConfig(name="digits", n_train=120, n_test=60), model="deq_conv_c4",
                       gammas=[0.0, 1.0], seeds=[0, 1], solver=SolverConfig(tol=1e-4, max_iter=40),
                       monitor=MonitorConfig(examples=30, samples=2, power_iters=5, caps=[1, 4]),
                       baselines=BaselinesConfig(depths=[]), train=TrainConfig(epochs=2, batch_size=40, lr=0.1))


def test_the_deq_flow_runs_the_conv_deq(tmp_path, prefect_harness):
    folder = Path(deq_flow(CONFIG, data_root=str(tmp_path)))
    epochs, costs = pd.read_parquet(folder / "deq_epochs.parquet"), pd.read_parquet(folder / "deq_costs.parquet")
    assert epochs[["gamma", "seed", "epoch"]].values.tolist() == [[g, s, e] for g in (0, 1) for s in (0, 1)
                                                                  for e in (1, 2)]
    assert (epochs["forward_converged"] == 1).all() and (epochs["forward_residual"] <= 1e-4).all()
    assert (epochs["jacobian_frobenius"] > 0).all() and (epochs["spectral_radius"] > 0).all()
    assert costs["network"].eq("deq").all() and len(costs) == 4 and (costs["step_memory_bytes"] > 0).all()
    assert not (folder / "deq_baselines.parquet").exists()


def test_the_deq_flow_refuses_baselines_for_the_conv_deq():
    with pytest.raises(ValueError, match=r"baselines.depths must be \[\] for the conv DEQ deq_conv_c8: the explicit "
                                         r"baselines unroll deq_w<width>'s tanh cell; set baselines: \{depths: \[\]\}"):
        DEQFlowConfig(model="deq_conv_c8")
