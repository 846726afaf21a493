"""What a multistep solver's step takes from this UNet call and from earlier calls.

LMS (Karras et al. 2022's linear multistep), PNDM (PLMS, and its Runge-Kutta warm-up),
DPM-Solver++ 2M (Lu et al. 2022) and UniPC (Zhao et al. 2023) keep earlier calls' outputs
(LMS: `derivatives`; PNDM: `ets`, and `cur_model_output` inside a Runge-Kutta step;
DPM-Solver++ and UniPC: `model_outputs`, the x0 each call was converted to) and mix them
into the step. Their step is affine in the current output and in each stored one, so it
splits exactly:

    x_{t-1} = rest + current + sum_k history_k

measured, like the loop's `weaken`, by stepping copies of the scheduler (same timestep,
same sample, same noise draw):

    rest       the step with a zero model output and every stored output zeroed: what the
               step does to the latent by itself (rescaling, and UniPC's previous latent)
    current    x_{t-1} minus the step with a zero model output (history kept)
    history_k  the step with a zero model output and only stored output k kept, minus rest

`step_parts` returns those parts and each one's share of the step's move
(x_{t-1} - rest), projected on it per batch row: the shares add up to 1. A multistep
solver extrapolates, so a share can exceed 1 and an earlier call's can be negative
(PLMS's 55, -59, 37, -9 over 24).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (DPMSolverMultistepScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)

MULTISTEP = (LMSDiscreteScheduler, PNDMScheduler, DPMSolverMultistepScheduler,
             UniPCMultistepScheduler)


@dataclass
class StepParts:
    """One UNet call's step split into its sources; tensors (G, C, h, w), shares (G,)."""

    rest: torch.Tensor
    current: torch.Tensor
    history: list[torch.Tensor]  # newest stored output first; only those the step used
    history_calls: int  # the earlier UNet calls those outputs hold
    current_share: torch.Tensor  # (G,)
    history_shares: torch.Tensor  # (G, len(history))

    def shares(self) -> tuple[np.ndarray, np.ndarray, int]:
        """What the loop keeps of a call, on the host: current (G,), history (G, H), calls."""
        return (self.current_share.float().cpu().numpy(), self.history_shares.float().cpu().numpy(),
                self.history_calls)


def is_multistep(scheduler) -> bool:
    return isinstance(scheduler, MULTISTEP)


def history_slots(scheduler) -> list[tuple[str, int | None, int]]:
    """The stored outputs the next step() may read, newest first: (attribute, list index
    or None for a plain attribute, UNet calls it holds). Slots the step turns out not to
    use (a first-order step of DPM-Solver++) measure exactly zero and are dropped."""
    if isinstance(scheduler, LMSDiscreteScheduler):  # order 4 (step()'s default): 3 earlier
        return [("derivatives", -k, 1) for k in range(1, min(len(scheduler.derivatives), 3) + 1)]
    if isinstance(scheduler, PNDMScheduler):
        prk = not scheduler.config.skip_prk_steps and scheduler.counter < len(scheduler.prk_timesteps)
        if prk:  # the 4th Runge-Kutta call adds the step's three earlier calls, summed
            return [("cur_model_output", None, 3)] if scheduler.counter % 4 == 3 else []
        return [("ets", -k, 1) for k in range(1, min(len(scheduler.ets), 3) + 1)]
    if isinstance(scheduler, (DPMSolverMultistepScheduler, UniPCMultistepScheduler)):
        outputs = scheduler.model_outputs
        return [("model_outputs", -k, 1) for k in range(1, len(outputs) + 1)
                if outputs[-k] is not None]
    return []


def _with_zero_outputs(scheduler, slots, zero_entries):
    """A copy of `scheduler` whose stored outputs in `slots` are what those calls would
    have stored had the UNet output zero (`zero_entries[k]` for slot k; None: zeros)."""
    s = copy.deepcopy(scheduler)
    for (attr, index, _), entry in zip(slots, zero_entries):
        value = getattr(s, attr) if index is None else getattr(s, attr)[index]
        if entry is None:
            entry = torch.zeros_like(value) if torch.is_tensor(value) else 0
        if index is None:
            setattr(s, attr, entry)
        else:
            getattr(s, attr)[index] = entry.clone()
    return s


def _newest_entry(scheduler):
    """The output the last step() stored, as it is kept (LMS: a derivative; DPM-Solver++,
    UniPC: a converted x0); None for PNDM, which keeps raw outputs (zero for a zero output)."""
    if isinstance(scheduler, LMSDiscreteScheduler):
        return scheduler.derivatives[-1]
    if isinstance(scheduler, (DPMSolverMultistepScheduler, UniPCMultistepScheduler)):
        return scheduler.model_outputs[-1]
    return None


def _share(part, move):
    """Per row, <part, move> / <move, move> (0 where the step does not move). (G,)"""
    part, move = part.float(), move.float()
    return (part * move).sum(dim=(1, 2, 3)) / (move * move).sum(dim=(1, 2, 3)).clamp_min(1e-30)


class Tracker:
    """Splits every step of one sweep (one call of `step` per UNet call, in order) and
    makes the zero-output step the loop's weaken is measured with.

    The stored output of an earlier call is converted with that call's latent (LMS's
    derivative (x - x0) / sigma, DPM-Solver++'s x0): its "zero" is what that call would
    have stored had the UNet output zero, kept here for the last few calls, so that
    every part is what a UNet output moved, as for the current call.
    """

    KEEP = 4  # stored outputs a step may read: LMS and PLMS 3, DPM-Solver++ 1, UniPC 2

    def __init__(self):
        self.zero_entries = []  # per call, newest last: its stored output for a zero UNet output
        self.records = []  # per call: StepParts.shares(), or None for a single-step scheduler

    def step(self, before, model_output, prev_sample, step) -> tuple[torch.Tensor, StepParts | None]:
        """Split one call's step and keep its shares: (the step with a zero model output,
        the parts or None for a single-step scheduler).

        before: a copy of the scheduler as it was before this call's step(); it is stepped
        here with a zero model output (the loop's weaken measures with that step's
        result); model_output: the output the step was given; prev_sample: what the step
        returned; step(scheduler, model_output) -> prev_sample: steps a scheduler with this
        call's timestep, sample and noise.
        """
        if not is_multistep(before):
            self.records.append(None)
            return step(before, torch.zeros_like(model_output)), None
        parts, zero_step = self._split(before, model_output, prev_sample, step)
        self.records.append(parts.shares())
        return zero_step, parts

    def _split(self, before, model_output, prev_sample, step) -> tuple[StepParts, torch.Tensor]:
        slots = history_slots(before)
        # slot k (newest first) was stored by the call k + 1 calls back (each call stores one)
        zero_entries = [self.zero_entries[-k] if index is not None and k <= len(self.zero_entries)
                        and attr != "ets" else None
                        for k, (attr, index, _) in enumerate(slots, start=1)]
        zero = torch.zeros_like(model_output)
        rest = step(_with_zero_outputs(before, slots, zero_entries), zero)
        history, used = [], []
        for k, slot in enumerate(slots):
            others = slots[:k] + slots[k + 1:]
            part = step(_with_zero_outputs(before, others, zero_entries[:k] + zero_entries[k + 1:]),
                        zero) - rest
            if bool(part.any()):  # a slot the step did not read changes nothing, bit for bit
                history.append(part)
                used.append(slot)
        zero_step = step(before, zero)  # last: `before` itself, which now keeps this call's zero entry
        self.zero_entries = [*self.zero_entries, _newest_entry(before)][-self.KEEP:]
        current = prev_sample - zero_step
        move = prev_sample - rest
        shares = [_share(part, move) for part in history]
        return StepParts(
            rest=rest, current=current, history=history,
            history_calls=sum(calls for _, _, calls in used),
            current_share=_share(current, move),
            history_shares=torch.stack(shares, dim=1) if shares else move.new_zeros((len(move), 0)),
        ), zero_step

    def run_record(self, row: int) -> dict | None:
        """run.json's `scheduler.multistep` for batch row `row`; None for a single-step
        scheduler (no call was split)."""
        if all(r is None for r in self.records):
            return None
        return {"current": [float(c[row]) for c, _, _ in self.records],
                "history": [[float(x) for x in h[row]] for _, h, _ in self.records],
                "history_calls": [int(n) for _, _, n in self.records]}
