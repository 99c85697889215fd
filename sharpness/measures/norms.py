"""Norm-based baselines of Jiang et al. 2020 (§C.1): products of the weight matrices' norms.

Over the weight tensors W_l (parameters with two or more dimensions — Linear, Conv, Embedding weights;
a convolution's kernel reshaped to (out channels) × (the rest), the common reading; Jiang et al. do not
spell the reshape out):

    log_prod_fro  = Σ_l log ‖W_l‖_F         ("log.prod.of.fro")
    log_prod_spec = Σ_l log ‖W_l‖₂          ("log.prod.of.spec", ‖·‖₂ the largest singular value)
    sum_fro_sq    = Σ_l ‖W_l‖_F²            (the squared ℓ2 norm of the weights, weight decay's quantity)

Logarithms, because the products overflow for deep networks. Jiang et al. found several of these
correlate *negatively* with the generalization gap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["norm_baselines"]


def norm_baselines(model: nn.Module) -> dict[str, float]:
    """{log_prod_fro, log_prod_spec, sum_fro_sq, n_layers} of ``model``'s weight tensors (read only)."""
    logs_fro, logs_spec, sq = 0.0, 0.0, 0.0
    n = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() < 2:
                continue
            W = p.detach().double().reshape(p.shape[0], -1)
            fro = float(torch.linalg.matrix_norm(W, "fro"))
            spec = float(torch.linalg.matrix_norm(W, 2))
            logs_fro += math.log(fro) if fro > 0 else -math.inf
            logs_spec += math.log(spec) if spec > 0 else -math.inf
            sq += fro ** 2
            n += 1
    return {"log_prod_fro": logs_fro, "log_prod_spec": logs_spec, "sum_fro_sq": sq, "n_layers": n}
