"""The laws a fit can name: `LAWS` by name, and `get_law` (which also builds BNSL with K breaks)."""

from __future__ import annotations

from analysis import loss_laws, stage_laws
from analysis.law_spec import Law

__all__ = ["LAWS", "get_law"]


LAWS: dict[str, Law] = {
    "chinchilla": loss_laws.CHINCHILLA,
    "data-constrained": loss_laws.DATA_CONSTRAINED,
    "power-n": loss_laws.power_law("power-n", "N", ("E", "A", "alpha")),
    "power-d": loss_laws.power_law("power-d", "D", ("E", "B", "beta")),
    "power-c": loss_laws.power_law("power-c", "C", ("E", "A", "alpha")),
    "kaplan-n": loss_laws.KAPLAN_N,
    "kaplan-nd": loss_laws.KAPLAN_ND,
    "bnsl": loss_laws.bnsl_law(1),
    "sigmoid": stage_laws.SIGMOID,
    "finetune-rectified": stage_laws.FINETUNE_RECTIFIED,
    "finetune-power": stage_laws.FINETUNE_POWER,
    # Frantar et al. 2023: Huber on ln L, delta 1e-3 (their language-model fit) or on L, delta 0.01 (ViT)
    "sparsity": stage_laws.sparsity_law("sparsity", "log", 1e-3),
    "sparsity-linear": stage_laws.sparsity_law("sparsity-linear", "identity", 0.01),
    "sigmoid-increasing": stage_laws.monotone_sigmoid("increasing"),
    "sigmoid-decreasing": stage_laws.monotone_sigmoid("decreasing"),
}


def get_law(name: str) -> Law:
    """Returns the registered Law called name (see LAWS; "bnslK" gives K breaks)."""
    if name in LAWS:
        return LAWS[name]
    if name.startswith("bnsl") and name[4:].isdigit():
        return loss_laws.bnsl_law(int(name[4:]))
    raise KeyError(f"unknown law {name!r}; known: {sorted(LAWS)}")
