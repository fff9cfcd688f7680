"""The seen-cache, message cache and recent-id sets against simple models (hypothesis)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aipg.gossip.cache import MessageCache, RecentIds, SeenCache

ids = st.integers(0, 40).map(lambda i: i.to_bytes(32, "big"))
topics = st.sampled_from(["a", "b"])


class MessageCacheMachine(RuleBasedStateMachine):
    GOSSIP, HISTORY = 2, 4

    def __init__(self):
        super().__init__()
        self.cache = MessageCache(self.GOSSIP, self.HISTORY)
        self.windows: list[list[tuple[bytes, str]]] = [[]]  # newest first
        self.asked: dict[tuple[bytes, str], int] = {}

    def _live(self) -> dict[bytes, str]:
        return {mid: t for w in self.windows[: self.HISTORY] for mid, t in w}

    @rule(mid=ids, topic=topics)
    def put(self, mid, topic):
        if mid not in self._live():
            self.windows[0].append((mid, topic))
        self.cache.put(mid, b"msg" + mid, topic)

    @rule()
    def shift(self):
        self.cache.shift()
        self.windows.insert(0, [])
        for mid, _ in self.windows[self.HISTORY] if len(self.windows) > self.HISTORY else []:
            for key in [k for k in self.asked if k[0] == mid]:
                del self.asked[key]
        del self.windows[self.HISTORY :]

    @rule(mid=ids, peer=st.sampled_from(["p", "q"]))
    def ask(self, mid, peer):
        got, count = self.cache.get_for_peer(mid, peer)
        if mid in self._live():
            self.asked[(mid, peer)] = self.asked.get((mid, peer), 0) + 1
            assert got == b"msg" + mid and count == self.asked[(mid, peer)]
        else:
            assert got is None and count == 0

    @invariant()
    def gossip_windows_match(self):
        for topic in ("a", "b"):
            want = [mid for w in self.windows[: self.GOSSIP] for mid, t in w if t == topic]
            assert self.cache.gossip_ids(topic) == want
        assert len(self.cache) == len(self._live())


class SeenCacheMachine(RuleBasedStateMachine):
    TTL = 5.0

    def __init__(self):
        super().__init__()
        self.cache = SeenCache(self.TTL)
        self.now = 0.0
        self.model: dict[bytes, float] = {}

    @rule(mid=ids)
    def add(self, mid):
        fresh = self.cache.add(mid, self.now)
        assert fresh == (mid not in self.model)
        self.model.setdefault(mid, self.now + self.TTL)

    @rule(dt=st.floats(0, 3))
    def tick(self, dt):
        self.now += dt
        self.cache.expire(self.now)
        self.model = {m: at for m, at in self.model.items() if at > self.now}

    @invariant()
    def same_members(self):
        assert len(self.cache) == len(self.model)
        assert all(m in self.cache for m in self.model)


class RecentIdsMachine(RuleBasedStateMachine):
    CAP = 5

    def __init__(self):
        super().__init__()
        self.ids = RecentIds(self.CAP)
        self.model: list[bytes] = []

    @rule(mid=ids)
    def add(self, mid):
        self.ids.add(mid)
        if mid not in self.model:
            self.model.append(mid)
            del self.model[: -self.CAP]

    @invariant()
    def keeps_the_newest(self):
        for i in range(41):
            mid = i.to_bytes(32, "big")
            assert (mid in self.ids) == (mid in self.model)


# No per-example deadline: a shared CI machine can stall any single example.
_settings = settings(deadline=None, max_examples=50)
MessageCacheMachine.TestCase.settings = _settings
SeenCacheMachine.TestCase.settings = _settings
RecentIdsMachine.TestCase.settings = _settings
TestMessageCache = MessageCacheMachine.TestCase
TestSeenCache = SeenCacheMachine.TestCase
TestRecentIds = RecentIdsMachine.TestCase
