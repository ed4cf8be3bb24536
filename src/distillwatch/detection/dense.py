"""Camouflage-resistant dense blocks (Fraudar, Hooi et al., KDD 2016) in account-artefact graphs.

A hydra is a block of accounts that share an unusual number of artefacts (cards, wrappers,
prompts, sign-up hours). Attackers camouflage by also touching popular artefacts (a common
browser build, a popular question), so each edge is weighted by ``1 / log(degree + 5)`` of its
artefact: sharing something everybody has adds almost nothing. Greedy peeling removes, one at a
time, the node contributing least weight and keeps the prefix with the highest density
``f(S) / |S|``; that block is within a factor 2 of the densest one.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from distillwatch.detection.graph import EdgeIndex


@dataclass
class DenseBlock:
    accounts: list[int]  # indices into the graph's account names (``EdgeIndex.names``)
    artefacts: int
    density: float


def camouflage_weights(artefact_index: np.ndarray) -> np.ndarray:
    """Fraudar's column weights: an artefact shared by d accounts weighs 1 / log(d + 5)."""
    degree = np.bincount(artefact_index)
    return 1.0 / np.log(degree[artefact_index] + 5.0)


def densest_block(
    account_index: np.ndarray, artefact_index: np.ndarray, weight: np.ndarray
) -> DenseBlock:
    """Greedy peeling of one bipartite graph given as parallel edge arrays."""
    if len(account_index) == 0:
        return DenseBlock([], 0, 0.0)
    accounts = int(account_index.max()) + 1
    nodes = accounts + int(artefact_index.max()) + 1
    left = account_index.astype(np.int64)
    right = artefact_index.astype(np.int64) + accounts
    ends = np.concatenate([left, right])
    others = np.concatenate([right, left])
    weights = np.concatenate([weight, weight]).astype(float)
    order = np.argsort(ends, kind="stable")
    starts = np.searchsorted(ends[order], np.arange(nodes + 1))
    neighbours, edge_weights = others[order].tolist(), weights[order].tolist()
    priority = np.bincount(ends, weights=weights, minlength=nodes).tolist()
    present = np.bincount(ends, minlength=nodes) > 0
    alive = int(present.sum())
    total = float(weight.sum())
    removed = [not p for p in present.tolist()]
    heap = [(priority[n], n) for n in range(nodes) if not removed[n]]
    heapq.heapify(heap)
    best, best_step, peeled = total / max(alive, 1), 0, []
    start_list = starts.tolist()
    while heap:
        value, node = heapq.heappop(heap)
        if removed[node] or not math.isclose(value, priority[node], abs_tol=1e-12):
            continue
        removed[node] = True
        peeled.append(node)
        total -= priority[node]
        alive -= 1
        for k in range(start_list[node], start_list[node + 1]):
            other = neighbours[k]
            if not removed[other]:
                priority[other] -= edge_weights[k]
                heapq.heappush(heap, (priority[other], other))
        if alive and total / alive > best:
            best, best_step = total / alive, len(peeled)
    dropped = set(peeled[:best_step])
    kept = [n for n in range(nodes) if present[n] and n not in dropped]
    return DenseBlock(
        accounts=[n for n in kept if n < accounts],
        artefacts=sum(1 for n in kept if n >= accounts),
        density=best,
    )


def cluster_density(
    index: EdgeIndex, membership: dict[str, int], min_accounts: int = 3
) -> dict[int, DenseBlock]:
    """The densest block inside each community of ``min_accounts`` or more, with Fraudar's
    column weights computed over the whole graph (so camouflage on popular artefacts is cheap
    everywhere, not only inside the community). Accounts ``membership`` leaves out (a partial
    grouping, such as content groups) are in no block."""
    if not len(index) or not membership:
        return {}
    weight = camouflage_weights(index.artefact_index)
    of_account = np.array([membership.get(str(name), -1) for name in index.names])
    ids, sizes = np.unique(of_account, return_counts=True)
    community = of_account[index.account_index]
    order = np.argsort(community, kind="stable")
    bounds = np.searchsorted(community[order], [*ids, ids[-1] + 1])
    result: dict[int, DenseBlock] = {}
    for c, size, lo, hi in zip(ids, sizes, bounds[:-1], bounds[1:], strict=True):
        if size < min_accounts or c < 0:
            continue
        rows = order[lo:hi]
        local_accounts, acc = np.unique(index.account_index[rows], return_inverse=True)
        _, art = np.unique(index.artefact_index[rows], return_inverse=True)
        block = densest_block(acc, art, weight[rows])
        block.accounts = [int(local_accounts[i]) for i in block.accounts]
        result[int(c)] = block
    return result
