"""Grouping accounts on the account-artefact graph: Leiden communities (igraph's implementation)
over every artefact, and content groups (connected components over shared content only)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import igraph as ig
import numpy as np
from scipy import sparse


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
    kind: np.ndarray | None = None  # each edge's artefact kind, when the edges carry one

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
        kind = np.asarray(edges["kind"], dtype=object)[order] if "kind" in edges else None
        return cls(names, account_index[order], artefact_index[order], weight[order], kind)

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


#: A content artefact held by more candidate accounts than this is left out of content groups
#: (its pairs grow as the square of its reach); such wide sharing is Leiden's to group.
MAX_GROUP_REACH = 200


def content_groups(index: EdgeIndex, candidates: set[str], kinds: tuple[str, ...],
                   core: int = 2, min_size: int = 2,
                   peers: set[str] | None = None) -> list[list[str]]:  # fmt: skip
    """Groups of ``candidates`` linked by what they ask: connected components of the graph in
    which two candidate accounts are neighbours when they share an artefact of ``kinds``
    (prompt texts, MinHash or embedding band signatures, wrappers), among the accounts that
    share at least ``core`` distinct such artefacts with the others kept (pruned repeatedly,
    like a k-core, but counting artefacts, not neighbours).

    Leiden's modularity splits a campaign that shares nothing but content into many small
    communities (each seed's rewrites link a few accounts at a time); components over the
    candidates alone keep it whole, and the pruning keeps out an account that hangs on one chance
    collision, however many members share that one artefact. An artefact links only when more
    candidates than other accounts hold it (what the group asks is its own, not the
    population's: public benchmark items, a popular question). Groups of at least ``min_size``
    accounts, each sorted, largest first.

    ``peers`` (a superset of ``candidates``; by default the candidates): accounts whose holding
    an artefact does not count against it, when grouping a subset of the candidates among
    themselves (what they ask is still not the population's when other candidates ask it).
    """
    if index.kind is None or not len(index) or not candidates:
        return []
    member = np.isin(index.names, list(candidates))
    peer = member if peers is None else np.isin(index.names, list(peers | candidates))
    of_kind = np.isin(index.kind, list(kinds))
    chosen = of_kind & member[index.account_index]
    # Holders of each artefact among the other accounts (each account once).
    others = np.unique(np.column_stack([index.artefact_index, index.account_index])[of_kind & ~peer[index.account_index]], axis=0)  # fmt: skip
    outside = np.bincount(others[:, 0], minlength=int(index.artefact_index.max()) + 1)
    accounts, rows = np.unique(index.account_index[chosen], return_inverse=True)
    artefacts, cols = np.unique(index.artefact_index[chosen], return_inverse=True)
    holders = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(accounts), len(artefacts))
    )
    holders.data[:] = 1  # duplicate (account, artefact) pairs count once
    reach = np.asarray(holders.sum(axis=0)).ravel()
    # Content the candidates hold mostly among themselves: a public benchmark item that a team
    # of ordinary accounts also sends links nobody, though a harvest asks it too.
    own = reach > outside[artefacts]
    holders = holders[:, np.flatnonzero((reach >= 2) & (reach <= MAX_GROUP_REACH) & own)].tocsr()
    kept = np.ones(len(accounts), dtype=bool)
    while True:
        reach = np.asarray(holders[kept].sum(axis=0)).ravel()
        shared = holders @ (reach >= 2).astype(np.int32)  # artefacts others kept also hold
        still = kept & (shared >= core)
        if still.sum() == kept.sum():
            break
        kept = still
    positions = np.flatnonzero(kept)
    links = holders[positions]
    links = links[:, np.flatnonzero(np.asarray(links.sum(axis=0)).ravel() >= 2)]
    pairs = sparse.triu(links @ links.T, k=1).tocoo()
    graph = ig.Graph(n=len(positions), edges=np.column_stack([pairs.row, pairs.col]).tolist())
    groups = [
        sorted(str(index.names[accounts[positions[v]]]) for v in component)
        for component in graph.connected_components()
        if len(component) >= min_size
    ]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


#: Artefact kinds that say where traffic came from, not who sent it: a stray is not attached to a
#: community on these alone (a residential proxy's exit IPs carry strangers' traffic too).
INFRASTRUCTURE_KINDS = ("net", "tls")


def attach_strays(index: EdgeIndex, membership: dict[str, int], min_size: int = 3,
                  min_share: float = 0.5, min_artefacts: int = 3) -> dict[str, int]:  # fmt: skip
    """``membership`` with each stray (an account whose community has fewer than ``min_size``
    accounts, too few to be scored) moved into the community it is most linked to, when that
    community holds at least ``min_share`` of the stray's link weight and the stray shares at
    least ``min_artefacts`` distinct artefacts with its members, not counting
    :data:`INFRASTRUCTURE_KINDS` (a stray that asked one or two of a campaign's questions stays
    where it is).

    Modularity leaves some accounts on their own, holding their own artefacts, although most
    of what they share they share with one community (a scheduler's accounts that also send
    near-copies of its prompts, or that keep its schedule: lockstep links alone, verified
    against the clock, are specific enough). Link weight from stray ``i`` to community ``C``: for every
    artefact ``i`` holds, ``i``'s edge weight times the weight other holders in ``C`` give it,
    over the same sum for all other holders. Returns a new mapping; communities do not move.
    """
    if not len(index) or not membership:
        return dict(membership)
    accounts = len(index.names)
    labels, community = np.unique([membership.get(str(n), -1) for n in index.names], return_inverse=True)  # fmt: skip
    sizes = np.bincount(community, minlength=len(labels))
    strays = np.flatnonzero(sizes[community] < min_size)
    if not len(strays):
        return dict(membership)
    shape = (accounts, int(index.artefact_index.max()) + 1)
    member = sparse.csr_matrix((np.ones(accounts), (np.arange(accounts), community)),
                               shape=(accounts, len(labels)))  # fmt: skip
    scorable = sparse.diags((sizes >= min_size).astype(float))

    w = sparse.csr_matrix((index.weight, (index.account_index, index.artefact_index)), shape=shape)  # fmt: skip
    mass = (w.T @ member).tocsr()  # artefact x community: the weight its holders give it
    mine = w[strays]
    # Everything a stray is linked to, less its own weight on its own artefacts.
    total = (
        np.asarray((mine @ mass).sum(axis=1)).ravel()
        - np.asarray(mine.multiply(mine).sum(axis=1)).ravel()
    )
    link = (mine @ (mass @ scorable)).tocsr()
    best = np.asarray(link.argmax(axis=1)).ravel()
    rows = np.arange(len(strays))
    best_link = np.asarray(link[rows, best]).ravel()
    share = np.divide(best_link, total, out=np.zeros(len(strays)), where=total > 0)
    specific = np.flatnonzero(~np.isin(index.kind, INFRASTRUCTURE_KINDS)) if index.kind is not None else np.arange(len(index))  # fmt: skip
    held = sparse.csr_matrix((np.ones(len(specific)), (index.account_index[specific], index.artefact_index[specific])), shape=shape)  # fmt: skip
    held.data[:] = 1.0  # duplicate (account, artefact) pairs count once
    holds = ((held.T @ member) > 0).astype(float)  # artefact x community: some member holds it
    shared = np.asarray((held[strays] @ holds).tocsr()[rows, best]).ravel()
    result = dict(membership)
    for stray, target, ok in zip(strays, best, (share >= min_share) & (shared >= min_artefacts) & (best_link > 0), strict=True):  # fmt: skip
        if ok:
            result[str(index.names[stray])] = int(labels[target])
    return result
