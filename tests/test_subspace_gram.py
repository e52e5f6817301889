"""The combination of a subspace layer's endpoints with their Gram in one autograd Function
(core.models.subspaces._CombineEndpointsWithGram): gradcheck, the gradient where only one output is used or the
combined gradient comes channels-last, and the regulariser's reuse of the forward's Gram only while it is current."""
import torch

from core.models.subspaces import (SubspaceLinear, _CombineEndpoints, _CombineEndpointsWithGram, _EndpointGram,
                                   pair_cosine_squared)

D64 = torch.float64


def test_the_fused_combination_and_gram_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    coefficients = torch.rand(2, 3, generator=g, dtype=D64, requires_grad=True)
    endpoints = torch.randn(2, 3, 4, 2, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(_CombineEndpointsWithGram.apply, (coefficients, endpoints))


def test_each_output_alone_has_the_gradient_of_its_own_function():
    """Only the combination used, only the Gram used, and both, with the combined weight's gradient not contiguous
    (a stacked conv's comes with its last two axes swapped): the endpoints' gradient equals _CombineEndpoints' and _EndpointGram's,
    and their sum."""
    g = torch.Generator().manual_seed(1)
    coefficients = torch.rand(2, 2, generator=g, dtype=D64)
    endpoints = torch.randn(2, 2, 3, 4, 5, generator=g, dtype=D64, requires_grad=True)
    probe = torch.randn(2, 3, 5, 4, generator=g, dtype=D64).transpose(2, 3)  # [2, 3, 4, 5], as a stacked conv1d's
    assert not probe.is_contiguous()
    probe_gram = torch.randn(2, 2, 2, generator=g, dtype=D64)

    def gradient(outputs, grads):
        """The endpoints' gradient of `outputs` given theirs (handed to the backward as they are)."""
        return torch.autograd.grad(outputs, endpoints, grads)[0]

    combined = gradient(_CombineEndpoints.apply(coefficients, endpoints), probe)
    gram = gradient(_EndpointGram.apply(endpoints), probe_gram)
    fused = lambda: _CombineEndpointsWithGram.apply(coefficients, endpoints)  # noqa: E731
    torch.testing.assert_close(gradient(fused()[0], probe), combined, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient(fused()[1], probe_gram), gram, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient(fused(), (probe, probe_gram)), combined + gram, rtol=1e-12, atol=1e-12)


def test_the_regulariser_reuses_the_forwards_gram_only_of_the_same_unchanged_weights():
    layer = SubspaceLinear(3, 2, 2, dtype=D64)
    layer.wants_gram, layer.coefficients = True, torch.tensor([0.3, 0.7], dtype=D64)
    weight = torch.randn(4, 2, 2, 3, dtype=D64, requires_grad=True)
    params = {"weight": weight, "bias": torch.zeros(4, 2, 2, dtype=D64)}
    layer._combined_stacked(params, 4)
    kept = layer._gram[0]
    assert layer.step_gram(weight) is kept  # this step's forward made it
    assert layer.step_gram(weight) is not kept  # used once: the next call computes a fresh one
    layer._combined_stacked(params, 4)
    with torch.no_grad():
        weight.add_(1.0)  # an optimizer's update: the forward's Gram is stale
    fresh = layer.step_gram(weight)
    torch.testing.assert_close(fresh, _EndpointGram.apply(weight))
    pairs = torch.tensor([[0, 1]] * 4)
    torch.testing.assert_close(pair_cosine_squared([fresh], pairs), fresh[:, 0, 1] ** 2 / (fresh[:, 0, 0] * fresh[:, 1, 1]))
