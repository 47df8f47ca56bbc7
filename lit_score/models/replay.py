"""The replay buffer of persistent contrastive-divergence chains (Du & Mordatch 2019), as a component of its own.

One rank's shard: ``states`` (S, *shape) and, for a class-conditional energy, the label each chain samples,
``labels`` (S,) (−1: the null label). A training step takes n slots — uniformly, or for requested labels a distinct
slot holding each label (:func:`match_slots`) — restarts a share 1 − ``reuse_prob`` of them (and any slot that had to
take another label) from fresh noise, runs the chains, and writes the states back. Under DDP each rank keeps its own
shard; the checkpoint holds all of them (``to_checkpoint``), and ``from_checkpoint`` gives each rank its own back or,
with another world size, deals the pooled chains out afresh.

The buffer draws nothing itself: the model hands it the fresh states / labels and the generator, so its random
stream is the model's chain generator, as before it was a component.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_score.utils import rand


def _rank_within(group: Tensor, groups: int) -> Tensor:
    """r_i = #{j < i : group_j = group_i}: each element's position among the equal elements before it, (n,)."""
    order = torch.argsort(group, stable=True)
    count = torch.bincount(group, minlength=groups)
    first = torch.cumsum(count, 0) - count
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.shape[0], device=group.device) - first[group[order]]
    return rank


def match_slots(slot_labels: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Distinct replay-buffer slots for requested labels (n,) among slots labelled ``slot_labels`` (S,), n ≤ S:
    (index (n,), matched (n,) bool). Request i gets a random slot holding its label (matched); a label the buffer
    holds too few of gets the left-over slots in random order (unmatched). One randperm of the S slots (on the
    generator's device); labels are −1 (null) … K − 1."""
    device = generator.device if generator is not None else slot_labels.device
    slot_labels, labels = slot_labels.to(device).long(), labels.to(device).long()
    size = slot_labels.shape[0]
    perm = torch.randperm(size, generator=generator, device=device)
    groups = int(torch.maximum(slot_labels.max(), labels.max())) + 2  # label −1 … K − 1 -> group 0 … K
    slot_group, want_group = slot_labels[perm] + 1, labels + 1
    grouped = perm[torch.argsort(slot_group, stable=True)]  # slots by label, in random order within a label
    have = torch.bincount(slot_group, minlength=groups)
    rank = _rank_within(want_group, groups)
    matched = rank < have[want_group]
    index = grouped[((torch.cumsum(have, 0) - have)[want_group] + rank).clamp(max=size - 1)]
    taken = _rank_within(slot_group, groups) < torch.bincount(want_group, minlength=groups)[slot_group]
    index[~matched] = perm[~taken][: int((~matched).sum())]
    return index, matched


class ReplayBuffer:
    """This rank's persistent chains: ``states`` (S, *shape) and, conditional models only, ``labels`` (S,)."""

    def __init__(self, states: Tensor, labels: Tensor | None = None) -> None:
        if labels is not None and labels.shape != states.shape[:1]:
            raise ValueError(f"{labels.shape[0]} chain labels for {states.shape[0]} chains")
        self.states, self.labels = states, labels

    @property
    def size(self) -> int:
        return self.states.shape[0]

    def starts(self, n: int, reuse_prob: float, noise: Callable[[int], Tensor], labels: Tensor | None,
               generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """(chain starts (n, *shape), the slots they came from (n,)) for one training step: a buffer state with
        probability ``reuse_prob``, else a row of ``noise(n)`` (drawn after the slots are chosen); with ``labels``,
        each chain from a slot of its label (a slot that had to take another label restarts from noise and takes
        the label)."""
        if n > self.size:
            raise ValueError(f"a batch of {n} is larger than the replay buffer ({self.size}): raise buffer_size")
        states = self.states.to(device)
        if labels is None:
            index = torch.randperm(self.size, generator=generator, device=device)[:n]
            fresh = rand((n,), generator, device) >= reuse_prob
        else:
            slot_labels = self.labels.to(device)
            index, matched = match_slots(slot_labels, labels, generator)
            index = index.to(device)
            fresh = (rand((n,), generator, device) >= reuse_prob) | ~matched.to(device)
            slot_labels[index] = labels.to(device)
            self.labels = slot_labels
        self.states = states
        fresh = fresh.reshape(n, *([1] * (states.ndim - 1)))
        return torch.where(fresh, noise(n), states[index]), index

    def write(self, index: Tensor, x: Tensor) -> None:
        """Store the chains' end states back into their slots."""
        self.states[index] = x

    def any_states(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``n`` distinct stored states (IGEBM-style sampling continues training's chains)."""
        if n > self.size:
            raise ValueError(f"{n} chains from a replay buffer of {self.size}: sample fewer")
        gen_device = generator.device if generator is not None else self.states.device
        index = torch.randperm(self.size, generator=generator, device=gen_device)[:n]
        return self.states[index.to(self.states.device)].to(device)

    def states_of(self, labels: Tensor, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Distinct stored states whose chains sample the requested ``labels`` (n,); refused in one line when the
        buffer holds too few chains of a label."""
        if self.labels is None:
            raise ValueError("this EBM holds no labelled replay buffer (trained with chain_init noise or data, or not"
                             " trained): sample from noise instead")
        labels = labels.long()
        if labels.shape[0] > self.size:
            raise ValueError(f"{labels.shape[0]} chains from a replay buffer of {self.size}: sample fewer")
        index, matched = match_slots(self.labels, labels, generator)
        if not bool(matched.all()):
            k = int(labels.to(matched.device)[~matched][0])
            raise ValueError(f"{int((labels == k).sum())} chains of class {k} requested from the replay buffer, which"
                             f" holds {int((self.labels == k).sum())}: sample fewer, or from noise")
        return self.states[index.to(self.states.device)].to(device)

    def to_checkpoint(self, gather: Callable[[Tensor], Tensor] | None, device: torch.device) -> dict[str, Tensor]:
        """Every rank's shard, stacked (world, S, *shape) on the CPU (``gather``: the strategy's all_gather under
        DDP, None on one process); ``labels`` likewise for a conditional model."""
        def stacked(t: Tensor) -> Tensor:
            t = t.to(device)
            return (gather(t) if gather is not None else t[None]).cpu()

        out = {"shards": stacked(self.states)}
        if self.labels is not None:
            out["labels"] = stacked(self.labels)
        return out

    @classmethod
    def from_checkpoint(cls, shards: Tensor, labels: Tensor | None, rank: int, world: int, size: int,
                        fresh_states: Callable[[int], Tensor], fresh_labels: Callable[[int], Tensor]) -> ReplayBuffer:
        """This rank's shard of a saved buffer; saved by another world size (or buffer size), the pooled chains are
        dealt out afresh and fresh draws fill any gap."""
        if shards.shape[0] == world and shards.shape[1] == size:
            return cls(shards[rank].clone(), None if labels is None else labels[rank].clone())
        pool = shards.flatten(0, 1)[rank::world][:size]
        rank_zero_warn(
            f"the replay buffer was saved by {shards.shape[0]} rank(s) of {shards.shape[1]} samples; dealing them"
            f" over {world} rank(s) of {size} (fresh noise fills any gap)"
        )
        states = fresh_states(size).cpu()
        states[: len(pool)] = pool
        dealt = None
        if labels is not None:  # the same deal for the labels; fresh labels for the fresh noise
            dealt = fresh_labels(size).cpu()
            dealt[: len(pool)] = labels.flatten(0, 1)[rank::world][:size]
        return cls(states, dealt)


__all__ = ["ReplayBuffer", "match_slots"]
