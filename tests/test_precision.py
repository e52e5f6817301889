"""runtime.precision: fp32 stays exact, bf16 stays close to it, and a device that cannot run bf16 is refused."""
import pytest
import torch

from core.config import RuntimeConfig, run_id
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
import core.runtime
from core.runtime import check_precision
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, evaluate
from core.training.experiment import train_on_subsets
from core.training.trainer import train

TRAIN = TrainConfig(epochs=4, batch_size=32, lr=0.05)
SEEDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig(name="digits", n_train=600, n_test=200))


def stacked(name: str, data, precision: str) -> Ensemble:
    """K models built without the device check (this CPU may lack native bf16: slow, but the numbers are bf16's)."""
    ensemble = Ensemble.init(name, data.input_shape, data.num_classes, SEEDS)
    ensemble.precision = precision
    return ensemble


@pytest.mark.parametrize("name", ["mlp_w32_d2", "cnn_w4_d2"])
def test_bf16_forward_is_fp32_logits_close_to_fp32(digits, name):
    x = digits.x_test[:64]
    exact = stacked(name, digits, "fp32")(x, shared=True)
    rounded = stacked(name, digits, "bf16")(x, shared=True)
    assert rounded.dtype == torch.float32 and rounded.shape == exact.shape
    scale = exact.abs().max()
    assert (rounded - exact).abs().max() <= 0.03 * scale  # bf16 keeps 8 bits of mantissa: ~0.4 % per product
    assert not torch.equal(rounded, exact)  # it did round


def test_bf16_training_keeps_fp32_weights_and_ends_close_to_fp32(digits):
    subsets = torch.ones(len(SEEDS), digits.n_train, dtype=torch.bool)
    results = {}
    for precision in ("fp32", "bf16"):
        ensemble = stacked("mlp_w32_d2", digits, precision)
        result = train(ensemble, digits.x_train, digits.y_train, subsets, [7, 8, 9, 10], TRAIN)
        assert all(p.dtype == torch.float32 for p in ensemble.params.values())
        results[precision] = (result.losses, evaluate(ensemble, digits.x_test, digits.y_test).accuracy())
    (loss32, acc32), (loss16, acc16) = results["fp32"], results["bf16"]
    assert (loss16 - loss32).abs().max() < 0.05  # mean epoch losses go from ~2.3 to ~0.1
    assert (acc16 - acc32).abs().max() <= 0.03  # test accuracies ~0.95 on 200 examples: within 6 of them
    assert not torch.equal(loss16, loss32)


def test_fp32_and_tf32_on_the_cpu_are_the_same_exact_numbers(digits):
    subsets = torch.ones(2, digits.n_train, dtype=torch.bool)
    outcomes = [train_on_subsets(digits, "mlp_w16_d1", [5, 6], subsets, TRAIN, precision=p) for p in ("fp32", "tf32")]
    assert torch.equal(outcomes[0].result.losses, outcomes[1].result.losses)
    assert torch.equal(outcomes[0].test.correct, outcomes[1].test.correct)


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch, digits):
    monkeypatch.setattr(core.runtime, "cpu_has_bf16", lambda: False)
    message = (r"runtime.precision=bf16: this CPU has no native bfloat16 arithmetic \(AVX-512 BF16 or AMX\), so bf16 "
               r"matmuls run hundreds of times slower than fp32 here; use precision fp32")
    with pytest.raises(ValueError, match=message):
        check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match=message):
        Ensemble.init("mlp_w8_d1", digits.input_shape, digits.num_classes, [0], precision="bf16")
    check_precision("fp32", torch.device("cpu"))
    check_precision("tf32", torch.device("cpu"))
    monkeypatch.setattr(core.runtime, "cpu_has_bf16", lambda: True)
    check_precision("bf16", torch.device("cpu"))  # AVX-512 BF16 / AMX: allowed


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_refuses_bf16_here_before_any_work(monkeypatch, tmp_path):
    from flows.train import TrainFlowConfig, train_flow

    monkeypatch.setattr(core.runtime, "cpu_has_bf16", lambda: False)
    config = TrainFlowConfig(runtime=RuntimeConfig(device="cpu", precision="bf16"))
    with pytest.raises(ValueError, match="runtime.precision=bf16: this CPU has no native bfloat16"):
        train_flow.fn(config, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()
    assert run_id("train", config) != run_id("train", TrainFlowConfig())
