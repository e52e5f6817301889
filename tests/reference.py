"""Independent one-model references the stacked paths are tested against: plain torch.optim.SGD, one model at a time."""
import torch
import torch.nn.functional as F
from torch import nn

from core.models.subspaces import (SubspaceBatchNorm, SubspaceConv, SubspaceLinear, draw_coefficients, draw_pair,
                            set_coefficients, subspace_layers)
from core.training.config import lr_at


def train_one_by_one(model, x, y, members, order_seed, config, mask=None, stop_after=None, start=0, before_step=None):
    """Reference: plain torch.optim.SGD, the same batch order, lr set every step (optionally stopping early,
    or starting at update `start` of the schedule with a fresh optimizer); returns the model and its updates.
    `before_step(model)`, called before each update's forward, returns an extra loss term (or 0), or a function that
    gives it once the forward has run."""
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    gen, steps_per_epoch, step = torch.Generator().manual_seed(order_seed), len(members) // config.batch_size, 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(mask.get(name, 1.0) if mask else 1.0)
    for _ in range(config.epochs):
        order = members[torch.randperm(len(members), generator=gen)]
        for s in range(steps_per_epoch):
            if step == stop_after:
                return model, step - start
            if step < start:
                step += 1
                continue
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(config, step, steps_per_epoch)
            extra = before_step(model) if before_step else 0.0
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss = loss + (extra() if callable(extra) else extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # the reference masks after the step; ours masks gradients
                for name, p in model.named_parameters():
                    p.mul_(mask.get(name, 1.0) if mask else 1.0)
            step += 1
    return model, step - start


def subspace_step(kind: str, layerwise: bool, seed: int, beta: float):
    """One model's per-step draws from its own generator (coefficients, then the pair) and its beta cos^2 term."""
    generator = torch.Generator().manual_seed(seed)

    def before_step(model):
        layers = subspace_layers(model)  # BatchNorm layers draw coefficients too (layerwise: their own)
        set_coefficients(model, draw_coefficients(kind, generator, len(layers), layers[0].endpoints, layerwise))
        i, j = draw_pair(generator, layers[0].endpoints).tolist()
        weighted = [layer for layer in layers if isinstance(layer, (SubspaceLinear, SubspaceConv))]  # not BatchNorm
        w_i, w_j = (torch.cat([layer.weight[e].flatten() for layer in weighted]) for e in (i, j))
        return beta * F.cosine_similarity(w_i, w_j, dim=0).square()

    return before_step


def jacobian_penalty_step(gamma: float, fraction: float, samples: int, seed: int):
    """One DEQ model's regulariser from its own generator: a draw decides whether the step is penalised; if so, after
    the forward, gamma ||eps^T J||^2 / D of the block's cell tanh(W z + U x + b) at z*, J by autograd of that cell
    written out here, over `samples` probes drawn from the same generator (mean over probes and examples)."""
    generator = torch.Generator().manual_seed(seed)

    def before_step(model):
        if not torch.rand((), generator=generator) < fraction:
            return 0.0
        block = next(m for m in model.modules() if hasattr(m, "stats"))
        seen = {}
        hook = block.register_forward_hook(lambda module, args, output: seen.update(x=args[0]))

        def penalty():
            hook.remove()
            z = block.stats.forward.z[0].clone().requires_grad_()  # [B, D]
            fz = torch.tanh(z @ block.weight.T + seen["x"] @ block.input_weight.T + block.bias)
            eps = torch.randn((samples, *z.shape), generator=generator)
            total = sum(torch.autograd.grad(fz, z, e, create_graph=True)[0].square().sum(1).mean() for e in eps)
            return gamma * total / (samples * z.shape[1])

        return penalty

    return before_step


def with_random_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """`model` with random BatchNorm affine parameters (every endpoint's, in a subspace network) and running
    statistics: fresh ones are alike (ones, zeros, 0, 1), which would hide a mix-up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, SubspaceBatchNorm)):
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
                layer.bias.normal_(generator=g)
                layer.running_mean.normal_(generator=g)
                layer.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def toy_data(n: int, classes: int) -> dict:
    """Random sequences `[n, 1, 16]` and images `[n, 1, 8, 8]` with labels, and three unequal subsets of n = 240:
    200 and 200 examples (6 steps of 32 an epoch) and every second one (3 steps: it idles half of every epoch)."""
    g = torch.Generator().manual_seed(0)
    subsets = torch.zeros(3, n, dtype=torch.bool)
    subsets[0, :200] = True
    subsets[1, 40:] = True
    subsets[2, ::2] = True
    return {"seq": torch.randn(n, 1, 16, generator=g), "img": torch.randn(n, 1, 8, 8, generator=g),
            "y": torch.randint(0, classes, (n,), generator=g), "subsets": subsets}


def assert_same_weights(a: nn.Module, b: nn.Module, atol=1e-5):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], atol=atol, rtol=1e-4, msg=name)


def assert_stacked_deqs_equal_each_alone(models: list, block: int, x: torch.Tensor, y: torch.Tensor, atol: float,
                                         rtol: float) -> None:
    """K DEQ models stacked (module `block` of each is the equilibrium block) give each model's own logits and
    parameter gradients, every solve of the K x B rows converged."""
    from core.training.ensemble import Ensemble

    ensemble = Ensemble.from_models(models)
    assert ensemble.stacked
    logits = ensemble(x, shared=True, train=True)
    k, b = len(models), len(x)
    F.cross_entropy(logits.transpose(1, 2), y.expand(k, -1), reduction="none").mean(1).sum().backward()
    stats = ensemble.template[block].stats
    assert stats.forward.steps.shape == stats.backward.steps.shape == (k, b)
    assert stats.forward.converged.all() and stats.backward.converged.all()
    for i, model in enumerate(models):
        plain = model(x)
        torch.testing.assert_close(logits[i], plain, atol=atol, rtol=rtol)
        F.cross_entropy(plain, y).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ensemble.params[name].grad[i], p.grad, atol=atol, rtol=rtol, msg=name)
