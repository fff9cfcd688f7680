"""Peer scoring P1-P7 on the pure PeerScore state machine (no network, explicit times)."""

from __future__ import annotations

import pytest

from aipg.gossip.config import PeerScoreParams, TopicScoreParams
from aipg.gossip.score import PeerScore
from aipg.testing.gossipkit import identity

T = "/aipg/1/txs"
A, B, C = (identity(i).peer_id for i in (1, 2, 3))


def _score(**topic_params) -> PeerScore:
    tp = TopicScoreParams(
        time_in_mesh_weight=0,
        first_message_deliveries_weight=0,
        invalid_message_deliveries_weight=0,
    )
    for k, v in topic_params.items():
        setattr(tp, k, v)
    ps = PeerScore(
        PeerScoreParams(topics={T: tp}, behaviour_penalty_weight=0, ip_colocation_factor_weight=0)
    )
    for peer in (A, B, C):
        ps.add_peer(peer, None)
    return ps


def test_p1_time_in_mesh_is_capped():
    ps = _score(time_in_mesh_weight=1.0, time_in_mesh_quantum=1.0, time_in_mesh_cap=5.0)
    ps.graft(A, T, now=0.0)
    ps.refresh(now=3.0, delivery_ttl=120)
    assert ps.score(A) == pytest.approx(3.0)
    ps.refresh(now=100.0, delivery_ttl=120)
    assert ps.score(A) == pytest.approx(5.0)
    ps.prune(A, T)
    assert ps.score(A) == 0


def test_p2_first_deliveries_count_decay_and_cap():
    ps = _score(
        first_message_deliveries_weight=2.0,
        first_message_deliveries_cap=3.0,
        first_message_deliveries_decay=0.5,
    )
    for i in range(5):
        ps.deliver_message(A, T, bytes([i]) * 32, now=0.0)
    ps.refresh(now=1.0, delivery_ttl=120)  # refresh also recomputes the cached score
    assert ps.score(A) == pytest.approx(2.0 * 3.0 * 0.5)


def test_p3_mesh_delivery_deficit_after_activation_and_p3b_on_prune():
    ps = _score(
        mesh_message_deliveries_weight=-1.0,
        mesh_message_deliveries_threshold=4.0,
        mesh_message_deliveries_activation=5.0,
        mesh_message_deliveries_decay=1.0,
        mesh_failure_penalty_weight=-1.0,
        mesh_failure_penalty_decay=1.0,
    )
    ps.graft(A, T, now=0.0)
    ps.refresh(now=2.0, delivery_ttl=120)
    assert ps.score(A) == 0  # not active yet
    ps.deliver_message(A, T, b"\x01" * 32, now=2.0)
    ps.refresh(now=6.0, delivery_ttl=120)
    assert ps.score(A) == pytest.approx(-((4 - 1) ** 2))
    ps.prune(A, T)  # the deficit sticks as P3b after leaving the mesh
    assert ps.score(A) == pytest.approx(-((4 - 1) ** 2))


def test_p3_duplicates_within_the_window_count_for_mesh_peers():
    ps = _score(
        mesh_message_deliveries_weight=-1.0,
        mesh_message_deliveries_threshold=2.0,
        mesh_message_deliveries_activation=0.0,
        mesh_message_deliveries_window=0.1,
        mesh_message_deliveries_decay=1.0,
    )
    for p in (A, B):
        ps.graft(p, T, now=0.0)
    for i in range(2):
        mid = bytes([i]) * 32
        ps.validate_message(mid, T, now=1.0)
        ps.deliver_message(C, T, mid, now=1.0)
        ps.duplicate_message(A, mid, now=1.05)  # within the window: counts
        ps.duplicate_message(B, mid, now=1.5)  # too late: does not
    ps.refresh(now=2.0, delivery_ttl=120)
    assert ps.score(A) == 0
    assert ps.score(B) == pytest.approx(-4.0)


def test_p4_invalid_messages_are_squared_and_hit_every_deliverer():
    ps = _score(invalid_message_deliveries_weight=-10.0, invalid_message_deliveries_decay=1.0)
    mid = b"\x07" * 32
    ps.validate_message(mid, T, now=0.0)
    ps.duplicate_message(B, mid, now=0.0)  # B delivered it while it was being validated
    ps.reject_message(A, T, mid)
    ps.reject_message(A, T)
    ps.reject_message(A, T)
    assert ps.score(A) == pytest.approx(-10.0 * 9)
    assert ps.score(B) == pytest.approx(-10.0)


def test_p5_app_specific_and_p6_ip_colocation():
    params = PeerScoreParams(
        app_specific_score=lambda p: 7.0 if p == A else 0.0,
        app_specific_weight=2.0,
        ip_colocation_factor_weight=-1.0,
        ip_colocation_factor_threshold=1,
    )
    ps = PeerScore(params)
    ps.add_peer(A, "10.0.0.1")
    ps.add_peer(B, "10.0.0.2")
    ps.add_peer(C, "10.0.0.2")
    assert ps.score(A) == pytest.approx(14.0)
    assert ps.score(B) == ps.score(C) == pytest.approx(-1.0)  # two on one IP, threshold 1
    loopback = PeerScore(params)
    for p in (A, B, C):
        loopback.add_peer(p, "127.0.0.1")
    assert loopback.score(B) == 0  # loopback is whitelisted


def test_p7_behaviour_penalty_over_threshold_decays():
    ps = PeerScore(
        PeerScoreParams(
            behaviour_penalty_weight=-1.0,
            behaviour_penalty_threshold=1.0,
            behaviour_penalty_decay=0.5,
        )
    )
    ps.add_peer(A, None)
    ps.add_penalty(A, 1.0)
    assert ps.score(A) == 0
    ps.add_penalty(A, 3.0)
    assert ps.score(A) == pytest.approx(-9.0)
    ps.refresh(now=1.0, delivery_ttl=120)
    assert ps.score(A) == pytest.approx(-1.0)


def test_a_bad_score_is_retained_after_disconnect_then_forgotten():
    ps = PeerScore(PeerScoreParams(retain_score=10.0))
    ps.add_peer(A, None)
    ps.add_penalty(A, 10.0)
    bad = ps.score(A)
    assert bad < 0
    ps.remove_peer(A, now=0.0)
    ps.add_peer(A, None)  # reconnecting does not wash the score
    assert ps.score(A) == bad
    ps.remove_peer(A, now=0.0)
    ps.refresh(now=11.0, delivery_ttl=120)
    assert ps.score(A) == 0
