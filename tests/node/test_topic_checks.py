"""Topic checks against a real chain: what this node can find false is never forwarded.

Each case is a message an attacker can craft: a finalized block with a forged commit, a
vote from a non-validator, a verdict from outside a receipt's committee. The checks are
run as gossip runs them (the topic validator); a rejected message costs its forwarder
score, a stale one is dropped without being forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from aipg.gossip import PubsubMessage, ValidationResult
from aipg.node.protocol.gossip import Stale, topic_checks, topic_validator
from aipg.pouw import Committee, PouwError, VerdictReason, make_verdict
from aipg.pouw import make_commit as make_commit_of
from aipg.stake.block import FinalizedBlock, VoteStep
from aipg.stake.builder import make_commit, make_vote
from aipg.stake.state import State
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    CHAIN,
    TEST_PARAMS,
    TestChain,
    ident,
    make_certificate,
    make_work,
)
from aipg.wire import PeerId, WireError, encode


@dataclass
class View:
    state: State
    committees: dict[bytes, Committee]

    def may_vote(self, receipt_id: bytes, signer: bytes) -> bool | None:
        committee = self.committees.get(receipt_id)
        return None if committee is None else signer in committee


@pytest.fixture
def chain() -> TestChain:
    c = TestChain(n_validators=4)
    for _ in range(3):
        c.next()
    return c


def next_block(chain: TestChain, signers) -> FinalizedBlock:
    block = chain.build()
    return FinalizedBlock(block, make_commit(CHAIN, block.height, block.hash, signers))


def test_the_next_block_with_a_validator_commit_is_forwarded(chain):
    check = topic_checks(CHAIN, View(chain.state, {}))["consensus"]
    check(encode(next_block(chain, chain.validators)))


def test_a_forged_commit_is_rejected(chain):
    check = topic_checks(CHAIN, View(chain.state, {}))["consensus"]
    strangers = [ident(900 + i) for i in range(4)]  # many keys, no stake
    with pytest.raises(LedgerError, match="non-validator"):
        check(encode(next_block(chain, strangers)))
    with pytest.raises(LedgerError, match="voting power"):  # one validator of four
        check(encode(next_block(chain, chain.validators[:1])))
    good = next_block(chain, chain.validators)
    other = good.block.replace(header=good.block.header.replace(time_ms=1))  # another block
    with pytest.raises(LedgerError, match="not for block"):  # under the good block's commit
        check(encode(FinalizedBlock(other, good.commit)))


def test_blocks_we_have_or_cannot_check_yet_are_dropped_not_forwarded(chain):
    fb = next_block(chain, chain.validators)
    ahead = View(chain.state, {})
    chain.next()
    behind = topic_checks(CHAIN, View(chain.state, {}))["consensus"]
    with pytest.raises(Stale):  # we have this height already
        behind(encode(fb))
    chain.next()
    far = next_block(chain, chain.validators)
    with pytest.raises(Stale):  # two ahead of `ahead`: sync fetches it, checking the commit
        topic_checks(CHAIN, ahead)["consensus"](encode(far))


def test_a_vote_at_the_current_height_from_a_non_validator_is_rejected(chain):
    check = topic_checks(CHAIN, View(chain.state, {}))["consensus"]
    h = chain.state.height + 1
    check(encode(make_vote(chain.validators[0], CHAIN, h, 0, VoteStep.PREVOTE, b"\x01" * 32)))
    with pytest.raises(WireError, match="non-validator"):
        check(encode(make_vote(ident(901), CHAIN, h, 0, VoteStep.PREVOTE, b"\x01" * 32)))
    with pytest.raises(Stale):  # a far height: maybe a later validator set; not forwarded
        check(encode(make_vote(ident(901), CHAIN, h + 5, 0, VoteStep.PREVOTE, b"\x01" * 32)))


def test_a_verdict_from_outside_a_tracked_committee_is_rejected(chain):
    cert = make_certificate(chain, ident(300))
    receipt_id = cert.verdicts[0].receipt_id
    members = {v.signer for v in cert.verdicts}
    committee = Committee(tuple(sorted(members)), len(members))
    check = topic_checks(CHAIN, View(chain.state, {receipt_id: committee}))["verdicts"]
    check(encode(cert.verdicts[0]))
    stranger = make_verdict(ident(902), cert.receipt, VerdictReason.OK, recomputed=b"")
    with pytest.raises(PouwError, match="not a candidate"):
        check(encode(stranger))
    untracked = topic_checks(CHAIN, View(chain.state, {}))["verdicts"]
    with pytest.raises(Stale):  # a receipt not seen yet: only validators may speak
        untracked(encode(stranger))


def test_a_reveal_that_contradicts_its_commitment_still_crosses_the_topic():
    """Commit, then reveal: a member's commitment and its matching reveal pass; so does
    another vote of the same member that contradicts the commitment on chain: it never
    counts, but beside the member's other vote it is conflicting-verdict evidence (D37),
    which every node must be able to see."""
    c = TestChain(n_validators=4, params=TEST_PARAMS.replace(verdict_commit_blocks=2))
    for _ in range(3):
        c.next()
    _job, _a, r, verdicts = make_work(c, ident(300), nonce=1)
    honest = verdicts[0]
    commit = make_commit_of(c.keys[honest.signer], honest)
    c.next(verdict_commits=[commit])
    committee = Committee(tuple(sorted(v.signer for v in verdicts)), len(verdicts))
    check = topic_checks(CHAIN, View(c.state, {honest.receipt_id: committee}))["verdicts"]
    check(encode(commit))
    check(encode(honest))
    turned = make_verdict(c.keys[honest.signer], r, VerdictReason.TOKEN_MISMATCH, recomputed=b"")
    check(encode(turned))
    stranger = make_verdict(ident(902), r, VerdictReason.OK, recomputed=b"")
    with pytest.raises(PouwError, match="not a candidate"):
        check(encode(make_commit_of(ident(902), stranger)))


async def test_the_validator_rejects_a_forged_block_and_ignores_a_stale_one(chain):
    validate = topic_validator(topic_checks(CHAIN, View(chain.state, {}))["consensus"])
    forged = next_block(chain, [ident(900 + i) for i in range(4)])
    peer = PeerId.from_public_key(ident(1).public_bytes)

    def message(data: bytes) -> PubsubMessage:
        return PubsubMessage(topic="/aipg/1/consensus", data=data, seqno=1)

    assert await validate(peer, message(encode(forged))) is ValidationResult.REJECT
    old = FinalizedBlock(chain.blocks[0], chain.commits[0])
    assert await validate(peer, message(encode(old))) is ValidationResult.IGNORE


class LiveView:
    """A node's view that follows its chain (the checks read the state at each call)."""

    def __init__(self, chain: TestChain):
        self.chain = chain

    @property
    def state(self) -> State:
        return self.chain.state

    def may_vote(self, receipt_id: bytes, signer: bytes) -> bool | None:
        return None


def test_blocks_topic_passes_one_copy_of_each_height_on(chain):
    """D102: on "blocks" a node forwards the next block (commit checked) or the one it
    just finalized itself (same hash), once per height whoever sent it; a block too far
    ahead is not forwarded but tells the node to sync."""
    heard: list[int] = []
    check = topic_checks(CHAIN, LiveView(chain), ahead=heard.append)["blocks"]
    block = chain.build()
    full = FinalizedBlock(block, make_commit(CHAIN, block.height, block.hash, chain.validators))
    three = FinalizedBlock(  # the same block under another valid commit (3 of 4 signed)
        block, make_commit(CHAIN, block.height, block.hash, chain.validators[:3])
    )
    strangers = [ident(900 + i) for i in range(4)]
    with pytest.raises(LedgerError, match="non-validator"):
        check(
            encode(FinalizedBlock(block, make_commit(CHAIN, block.height, block.hash, strangers)))
        )
    check(encode(full))
    with pytest.raises(Stale, match="already forwarded"):
        check(encode(three))
    # a validator that decided the block itself passes the proposer's copy on, once
    decided = TestChain(n_validators=4)
    for _ in range(3):
        decided.next()
    decided.commit(block)
    mine = topic_checks(CHAIN, LiveView(decided))["blocks"]
    mine(encode(three))
    with pytest.raises(Stale, match="already forwarded"):
        mine(encode(full))
    other = block.replace(header=block.header.replace(time_ms=1))
    with pytest.raises(Stale):  # another block at our height: not ours, not the next
        topic_checks(CHAIN, LiveView(decided))["blocks"](encode(FinalizedBlock(other, full.commit)))
    decided.next()
    decided.next()
    far = next_block(decided, decided.validators)
    with pytest.raises(Stale, match="ahead"):
        check(encode(far))
    assert heard == [far.block.height]
    with pytest.raises(WireError):  # only finalized blocks travel on "blocks"
        check(encode(make_vote(chain.validators[0], CHAIN, 4, 0, VoteStep.PREVOTE, b"\x01" * 32)))
