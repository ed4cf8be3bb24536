"""Community detection on the account-artefact graph (Leiden, igraph's implementation)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import igraph as ig
import numpy as np


@dataclass
class EdgeIndex:
    """The account-artefact edge list as integer vertex ids, built once for every graph step.

    ``names[account_index[e]]`` is edge e's account; artefacts are numbered ``0..artefacts-1``.
    Ids come from ``np.unique`` and edges are sorted, so both are deterministic for a given edge
    set, whatever order the SQL returned it in.
    """

    names: np.ndarray
    account_index: np.ndarray
    artefact_index: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, edges: dict[str, np.ndarray]) -> EdgeIndex:
        names, account_index = np.unique(
            np.asarray(edges["account_id"], dtype=object), return_inverse=True
        )
        _, artefact_index = np.unique(np.asarray(edges["artefact"]), return_inverse=True)
        weight = np.asarray(edges["weight"], dtype=float)
        # SQL returns edges in no fixed order (parallel aggregation); Leiden's result depends
        # on edge order, so sort: the same edge set always gives the same communities.
        order = np.lexsort((weight, artefact_index, account_index))
        return cls(names, account_index[order], artefact_index[order], weight[order])

    def __len__(self) -> int:
        return len(self.account_index)


def communities(index: EdgeIndex, seed: int = 0) -> dict[str, int]:
    """Map each linked account to a community id. Accounts with no edges are left out.

    The graph is bipartite (accounts and the artefacts they share), which keeps it linear in
    the number of (account, artefact) pairs: a payment card shared by 5,000 hydra accounts adds
    5,000 edges, not 12.5 million.
    """
    if not len(index):
        return {}
    accounts = len(index.names)
    pairs = np.column_stack([index.account_index, index.artefact_index + accounts])
    graph = ig.Graph(n=accounts + int(index.artefact_index.max()) + 1, edges=pairs.tolist())
    graph.es["weight"] = index.weight.tolist()
    # igraph's own Leiden (modularity objective) finds the same communities as the leidenalg
    # package's ModularityVertexPartition here and runs ~15x faster on 266k edges (0.6 s vs
    # 8.7 s). Its random choices come from a seeded generator, so runs are repeatable.
    ig.set_random_number_generator(random.Random(seed))
    try:
        membership = graph.community_leiden(
            objective_function="modularity", weights="weight", n_iterations=2
        ).membership
    finally:
        ig.set_random_number_generator(random)
    return {str(name): membership[i] for i, name in enumerate(index.names)}
