"""Sparse masking (SecAgg+-style) from ``SPARSE_FROM`` sites on: each site masks only with its
neighbours in the Harary graph H(t, n), t the collusion threshold.

The graph's promise is checked by brute force on small graphs (removing any t − 1 vertices leaves
it connected, and some t do disconnect it); on a run of 20 sites the masks still cancel and the
sum is exact, through the real site and coordinator classes and the wire codec; and the limit the
docs state is shown: a site's t neighbours together can strip its masks.
"""

from __future__ import annotations

import itertools
import secrets
from fractions import Fraction

import numpy as np
import pytest

from fedflow.apps.base import Payload
from fedflow.errors import RemoteProtocolError
from fedflow.node.secure_site import SecureSite
from fedflow.runtime.secure import MaskedRound, MaskedRun, majority
from fedflow.secure import MaskLabel, PairwiseMasker, SecureAggregationError, ring, sum_vectors
from fedflow.secure.pairwise import SPARSE_FROM, degree, harary, mask_words, masking_graph
from fedflow.wire import MaskedTask, MessageCodec


def _connected(edges: list[set[int]], removed: set[int]) -> bool:
    left = [v for v in range(len(edges)) if v not in removed]
    if not left:
        return True
    seen, todo = {left[0]}, [left[0]]
    while todo:
        for w in edges[todo.pop()]:
            if w not in removed and w not in seen:
                seen.add(w)
                todo.append(w)
    return len(seen) == len(left)


@pytest.mark.parametrize("n", range(4, 12))
def test_the_harary_graph_is_k_connected_and_no_more(n: int) -> None:
    for k in range(2, n - 1):
        edges = harary(k, n)
        assert all(b in edges[a] for a in range(n) for b in edges[a])  # undirected
        assert all(a not in edges[a] for a in range(n))
        assert min(len(e) for e in edges) >= k
        assert sum(len(e) for e in edges) // 2 == -(-k * n // 2)  # ⌈kn/2⌉ edges: minimal
        for removed in itertools.combinations(range(n), k - 1):
            assert _connected(edges, set(removed)), (k, n, removed)
        # tight: some k vertices cut it (a vertex's k neighbours cut it off)
        assert any(
            not _connected(edges, set(removed)) for removed in itertools.combinations(range(n), k)
        )


def _keys(n: int) -> dict[str, bytes]:
    return {f"site{i:02d}": PairwiseMasker(f"site{i:02d}").public_key for i in range(n)}


def test_the_masking_graph_is_complete_below_the_size_and_sparse_from_it() -> None:
    session = secrets.token_bytes(16)
    small = _keys(SPARSE_FROM - 1)
    graph = masking_graph(session, small, majority(len(small)))
    assert all(len(peers) == len(small) - 1 for peers in graph.values())
    keys = _keys(40)
    t = majority(40)
    assert degree(40, t) == t == 21
    graph = masking_graph(session, keys, t)
    assert set(graph) == set(keys)
    assert all(a in graph[b] for a in graph for b in graph[a])  # symmetric
    assert {len(peers) for peers in graph.values()} == {21}  # odd t, even n: t-regular
    odd = _keys(41)
    degrees = sorted(len(p) for p in masking_graph(session, odd, 21).values())
    assert degrees == [21] * 40 + [22]  # odd t and n: one site has one neighbour more
    assert masking_graph(session, keys, t) == graph  # derived: the same at every site
    other = masking_graph(secrets.token_bytes(16), keys, t)
    assert other != graph  # another run, another order of the sites on the circle
    assert all(len(p) == 39 for p in masking_graph(session, keys, 39).values())  # t = n − 1
    assert all(len(p) == 39 for p in masking_graph(session, keys, None).values())


def _maskers(n: int, threshold: int | None) -> dict[str, PairwiseMasker]:
    sites = {f"site{i:02d}": PairwiseMasker(f"site{i:02d}") for i in range(n)}
    keys = {name: s.public_key for name, s in sites.items()}
    session = secrets.token_bytes(16)
    for s in sites.values():
        s.agree(session, keys, threshold)
    return sites


def test_masks_cancel_on_the_sparse_graph_and_the_sum_is_exact() -> None:
    n, t, length, limbs = 20, 11, 50, 2
    sites = _maskers(n, t)
    for s in sites.values():
        assert len(s._pair) == len(s.neighbours) >= t
        assert len(s._pair) < n - 1
    rng = np.random.default_rng(0)
    inputs = {name: [int(v) for v in rng.integers(-(2**62), 2**62, length)] for name in sites}
    label = MaskLabel(1, 1, "sums", length, limbs, -60, 60, n)
    masked = {name: s.mask(label, ring.from_ints(inputs[name], limbs)) for name, s in sites.items()}
    expected = [sum(column) for column in zip(*inputs.values(), strict=True)]
    assert ring.to_ints(sum_vectors(list(masked.values()))) == expected
    for name in sites:  # each vector masked, and the sum without one site's stays masked
        assert ring.to_ints(masked[name]) != inputs[name]
        partial = sum_vectors([v for other, v in masked.items() if other != name])
        assert ring.to_ints(partial) != [e - x for e, x in zip(expected, inputs[name], strict=True)]


def test_a_sites_t_neighbours_together_can_strip_its_masks() -> None:
    """The documented limit: t colluding sites that are all of one site's neighbours (and the
    coordinator, which holds its masked vector) learn its input; t − 1 never can."""
    n, t, length = 20, 11, 8
    sites = _maskers(n, t)
    victim = sites["site07"]
    label = MaskLabel(1, 1, "sums", length, 1, -60, 60, n)
    secret = [int(v) for v in np.random.default_rng(1).integers(-(2**40), 2**40, length)]
    y = victim.mask(label, ring.from_ints(secret, 1))
    acc = ring.Accumulator(length, 1)
    acc.add(y)
    for peer in victim.neighbours:  # each colluding neighbour knows its own pair key with site07
        words = mask_words(sites[peer]._pair["site07"], label)
        if peer > "site07":
            acc.sub(words)
        else:
            acc.add(words)
    assert ring.to_ints(acc.result()) == secret
    assert len(victim.neighbours) >= t  # so no coalition of t − 1 sites holds all its pair keys


def test_a_site_refuses_a_threshold_below_a_majority_or_a_changed_one() -> None:
    keys = _keys(20)
    session = secrets.token_bytes(16)
    a = PairwiseMasker("site00")
    keys["site00"] = a.public_key
    with pytest.raises(SecureAggregationError, match="at least a majority"):
        a.agree(session, keys, 10)
    with pytest.raises(SecureAggregationError, match="at least a majority"):
        a.agree(session, keys, 21)
    a.agree(session, keys, 11)
    a.agree(session, keys, 11)  # the same again: accepted
    with pytest.raises(SecureAggregationError, match="another threshold"):
        a.agree(session, keys, 12)


class Sums(Payload, frozen=True):
    n: int
    values: np.ndarray


def test_twenty_sites_sum_exactly_through_the_one_exchange_protocol() -> None:
    """Real SecureSite and MaskedRound objects, every message through the wire codec."""
    n = 20
    rng = np.random.default_rng(7)
    data = {
        f"site{i:02d}": rng.standard_normal(300) * 2.0 ** rng.integers(-40, 40) for i in range(n)
    }
    sites = {
        name: SecureSite(name, lambda r, p, payload, name=name: (Sums(n=r, values=data[name]), 0.0))
        for name in data
    }
    codec = MessageCodec()
    run = MaskedRun(b"s" * 16, {name: s.public_key for name, s in sites.items()})
    assert run.threshold == majority(n) == 11
    for round_ in (1, 2):
        secure = MaskedRound(run, round_, "sums", Sums, {name: {} for name in sites}, list(sites))
        while not secure.done:
            requests = secure.requests()
            answers = {
                name: codec.decode(
                    codec.encode(sites[name].handle(codec.decode(codec.encode(msg))))
                )
                for name, msg in requests.items()
            }
            secure.feed(answers)
        assert isinstance(secure.result, Sums)
        assert secure.result.n == n * round_
        exact = [sum(map(_fraction, column)) for column in zip(*data.values(), strict=True)]
        assert secure.result.values.tolist() == [float(x) for x in exact]
    assert all(len(s.masker.neighbours) in (11, 12) for s in sites.values())


def _fraction(x: float) -> Fraction:
    return Fraction(float(x))


def test_a_threshold_without_keys_is_refused() -> None:
    site = SecureSite("site00", lambda r, p, payload: (Sums(n=1, values=np.zeros(2)), 0.0))
    task = MaskedTask(
        round=1, phase="sums", payload={}, counter=1, lsb=-60, msb=4, terms=2, threshold=2
    )
    with pytest.raises(RemoteProtocolError, match="a threshold alone"):
        site.handle(task)
