"""What a loss computes besides the batch: the `Objective` (every setting of the objective and its default) and the
global `Counts` it divides by. Built once where a config is made, passed whole to every loss.

    Objective   every setting of the objective (docs/method.md §2): λ and its warm-up, γ, EOS, the reduction, the
                value form, the token loss, online IQLearn's α; validated once, in `__post_init__`. `DEFAULTS` holds
                the defaults a user gets (the trainers' configs read theirs from it); `MLE` (`Objective.mle()`) is
                plain MLE in the logits form, the maths' neutral element; `from_run` reads a run's from its run.json
    ValueForm   how V(s) is parameterised (docs/method.md §1): the maths of each form, and the name of what it reads
                besides the logits (how a run provides that: `tirl.qv.inputs`); `VALUE_FORMS`, looked up by
                `value_form`
    Counts      the completion tokens and sequences of the whole accumulated batch on every process, which the
                losses divide by (`masked_mean`); None: this batch's own
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch

from .mdp import QV

REDUCTIONS = ("token", "sequence")
LOSS_TYPES = ("nll", "dft", "gem")
GEM_H = ("linear", "logsigmoid")
POLICY_TERMS = ("both", "td", "value")  # the online terms that see policy samples (`online_iq_loss_from_qv`)


# --------------------------------------------------------------------------------------------------------------------
# Value forms
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueForm:
    """One parameterisation of V(s) (docs/method.md §1). The policy is softmax(ℓ) in every form; only V changes.

    In terms of the logits' statistics and the form's input x_t (`input`):

        V(s_t) = C·LSE_θ(s_t) + S·x_t,    Q(s_t, a_t) = ℓ_t[a_t] + A·LSE_θ(s_t) + S·x_t

        logits     A = 0,  C = 1, no input                 V = LSE_θ
        reference  A = 0,  C = 1, S = −1, x = LSE_θ0       V = LSE_θ − LSE_θ0, θ0 the starting model (0 at the start)
        head       A = −1, C = 0, S = 1,  x = v_ψ(h)       V = v_ψ(h), a zero-initialised scalar head on the final
                                                           hidden state, trained with the model

    `input` names what the form reads besides the logits (None, "reference_lse" or "value_head"): the key of the
    `tirl.qv.inputs.ValueInput` that says how a run attaches, computes, saves and loads it. `input_trained`: x_t has a
    gradient of its own (v_ψ); otherwise it is data, and no gradient flows into it (LSE_θ0).
    """

    name: str
    A: float
    C: float
    input: str | None = None
    S: float = 0.0
    input_trained: bool = False

    def shift(self, value_input: torch.Tensor | None) -> torch.Tensor | None:
        """S·x_t from the form's input x [B, T − 1] (None in the logits form), detached unless `input_trained`."""
        self.check_input(value_input)
        if value_input is None:
            return None
        return self.S * (value_input if self.input_trained else value_input.detach())

    def apply(self, qv: QV, value_input: torch.Tensor | None = None) -> QV:
        """`qv` with V(s_t) in this form; `value_input` [B, T − 1] is the form's input (None for logits)."""
        shift = self.shift(value_input)
        if shift is None:
            return replace(qv, v_override=None)
        if shift.shape != qv.mask.shape:
            raise ValueError(f"the {self.name} form's input has shape {tuple(shift.shape)}, expected "
                             f"{tuple(qv.mask.shape)}")
        return replace(qv, v_override=(self.C * qv.lse + shift.to(qv.lse.dtype)) * qv.mask)

    def check_input(self, value_input: torch.Tensor | None) -> None:
        if (value_input is None) != (self.input is None):
            need = f"needs its {self.input} ([batch, seq − 1])" if self.input else "takes no input"
            raise ValueError(f"iq_value={self.name!r} {need}; got {'none' if value_input is None else 'one'}")


LOGITS = ValueForm("logits", A=0.0, C=1.0)
REFERENCE = ValueForm("reference", A=0.0, C=1.0, input="reference_lse", S=-1.0)
HEAD = ValueForm("head", A=-1.0, C=0.0, input="value_head", S=1.0, input_trained=True)
VALUE_FORMS: dict[str, ValueForm] = {f.name: f for f in (LOGITS, REFERENCE, HEAD)}


def value_form(form: str | ValueForm) -> ValueForm:
    """The `ValueForm` named `form` (a form passes through); a one-line ValueError for an unknown name."""
    if isinstance(form, ValueForm):
        return form
    if form not in VALUE_FORMS:
        raise ValueError(f"iq_value must be one of {', '.join(VALUE_FORMS)}, got {form!r}")
    return VALUE_FORMS[form]


# --------------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------------


def _finite(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}" if low is not None else "finite"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value}")


def _one_of(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class Objective:
    """Every setting of the objective (docs/method.md §2), checked once, here, and each one's default:

        L = E[ℓ_tok(a_t|s_t)] + λ·E[r_t²] − β·E[H(π(·|s_t))],    r_t = Q(s_t, a_t) − γ·V(s_{t+1})

    with the token loss ℓ_tok = −log π (`loss_type="nll"`, MLE; λ = 0 is exactly MLE), DFT's −sg(π)·log π or GEM's
    (`tirl.losses.gem`), E a token mean or a mean of per-sequence means (`iq_reduction`), and V in `iq_value`'s form.
    DFT and GEM are baselines of their own: they take λ = 0 and β = 0 (`Objective.mle(loss_type="gem")`). Online
    IQLearn mixes policy samples into the value and TD terms with weight α (`iq_alpha`, `iq_policy_terms`;
    `online_iq_loss_from_qv`); the offline losses do not read them, and GAIL reads γ and the reduction for its returns
    and policy-gradient mean.

    The defaults are the ones a user gets (the trainers' configs read theirs from `DEFAULTS`). `Objective.mle()` is
    the neutral objective, plain MLE in the logits form: the losses' default and the start of `from_config`.
    """

    iq_lambda: float = 0.01  # λ, weight of the TD (χ²) term
    iq_lambda_warmup_steps: int = 0  # λ ramps linearly from 0 over this many optimizer steps (`at`)
    iq_gamma: float = 0.99  # γ in r_t; the paper does not state its value
    iq_reduction: str = "token"  # "token" or "sequence"
    iq_stop_grad_next: bool = False  # no gradient through V(s_{t+1})
    iq_value: ValueForm = REFERENCE  # the value form (a name is looked up)
    entropy_coef: float = 0.0  # β of entropy-regularised MLE
    loss_type: str = "nll"  # the token loss: "nll" (MLE), "dft" or "gem"
    gem_beta: float = 0.7  # GEM's temperature β of q = softmax(ℓ/β)
    gem_h: str = "logsigmoid"  # GEM's weights: "linear" (1) or "logsigmoid" (sigmoid(0.01·(ℓ_v − ℓ_y)))
    iq_alpha: float = 0.1  # α, the weight of policy samples in online IQLearn's mixture (the paper's mix-in ratio)
    iq_policy_terms: str = "both"  # the online terms that see policy samples: "both", "td" or "value"
    eos_token_ids: tuple[int, ...] = ()  # the actions that end an episode; () = every completion end is terminal

    def __post_init__(self):
        object.__setattr__(self, "iq_value", value_form(self.iq_value))
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        _finite("iq_lambda", self.iq_lambda, 0.0)
        _finite("iq_gamma", self.iq_gamma, 0.0, 1.0)
        _finite("entropy_coef", self.entropy_coef, 0.0)
        _finite("iq_alpha", self.iq_alpha, 0.0, 1.0)
        if not isinstance(self.iq_lambda_warmup_steps, int) or self.iq_lambda_warmup_steps < 0:
            raise ValueError(f"iq_lambda_warmup_steps must be a whole number >= 0, got {self.iq_lambda_warmup_steps}")
        _one_of("iq_reduction", self.iq_reduction, REDUCTIONS)
        _one_of("loss_type", self.loss_type, LOSS_TYPES)
        _one_of("gem_h", self.gem_h, GEM_H)
        _one_of("iq_policy_terms", self.iq_policy_terms, POLICY_TERMS)
        if not (isinstance(self.gem_beta, (int, float)) and math.isfinite(self.gem_beta) and self.gem_beta > 0):
            raise ValueError(f"gem_beta must be a finite number > 0, got {self.gem_beta}")
        if self.loss_type != "nll" and (self.iq_lambda != 0 or self.entropy_coef != 0):
            raise ValueError(f"loss_type={self.loss_type!r} is a baseline of its own: it takes iq_lambda=0 and "
                             f"entropy_coef=0 (got {self.iq_lambda:g} and {self.entropy_coef:g})")

    @classmethod
    def mle(cls, **changes) -> Objective:
        """Plain MLE: λ = 0, V in the logits form, no policy samples (α = 0), every other setting at its default
        unless given in `changes`."""
        return cls(**{"iq_lambda": 0.0, "iq_value": LOGITS, "iq_alpha": 0.0, **changes})

    @classmethod
    def from_config(cls, config, eos_token_ids: Sequence[int] = ()) -> Objective:
        """The objective of a trainer config: `mle()` with each setting the config has (a config without one takes
        MLE's: GAIL has no λ, offline IQLearn no α)."""
        given = {name: getattr(config, name) for name in _SETTINGS if hasattr(config, name)}
        return cls.mle(**given, eos_token_ids=tuple(eos_token_ids))

    @classmethod
    def from_run(cls, run: Mapping) -> Objective:
        """The objective a run trained with, from its `run.json` record (the settings in `run["config"]`, as
        `from_config` reads a config); for a model that is not a tirl run (`{}`), plain MLE in the logits form."""
        config = run.get("config") or {}
        return cls.mle(**{name: config[name] for name in _SETTINGS if config.get(name) is not None})

    def at(self, step: int | None) -> Objective:
        """The objective in force at optimizer step `step`: λ ramped linearly over `iq_lambda_warmup_steps` (from 0,
        plain MLE); None (evaluation) or after the warm-up: the full λ."""
        if step is None or self.iq_lambda_warmup_steps <= 0 or step >= self.iq_lambda_warmup_steps:
            return self
        return replace(self, iq_lambda=self.iq_lambda * step / self.iq_lambda_warmup_steps)


# the settings a config or a run record carries (the EOS ids come from the tokenizer)
_SETTINGS = tuple(f.name for f in fields(Objective) if f.name != "eos_token_ids")
DEFAULTS = Objective()  # every setting at its default: what a user gets
MLE = Objective.mle()  # plain MLE in the logits form: the losses' default


@dataclass(frozen=True)
class Counts:
    """The counts of the whole accumulated batch on every process that the losses divide by (`masked_mean`).

    `tokens` is `num_items_in_batch` as `transformers.Trainer` passes it (completion tokens of expert rows);
    `sequences` the rows with a completion token; `policy_*` the same for the online losses' policy rows. A count left
    None is the micro-batch's own, which is exact for one micro-batch on one process.
    """

    tokens: int | torch.Tensor | None = None
    sequences: int | torch.Tensor | None = None
    policy_tokens: int | torch.Tensor | None = None
    policy_sequences: int | torch.Tensor | None = None

    def expert(self, reduction: str) -> int | torch.Tensor | None:
        """The denominator of an expert mean under `reduction`."""
        return self.tokens if reduction == "token" else self.sequences

    def policy(self, reduction: str) -> int | torch.Tensor | None:
        """The denominator of a policy mean under `reduction`."""
        return self.policy_tokens if reduction == "token" else self.policy_sequences


__all__ = ["DEFAULTS", "GEM_H", "HEAD", "LOGITS", "LOSS_TYPES", "MLE", "POLICY_TERMS", "REDUCTIONS", "REFERENCE",
           "VALUE_FORMS", "Counts", "Objective", "ValueForm", "value_form"]
