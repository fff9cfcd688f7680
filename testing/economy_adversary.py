"""The adversary's own moves in the economic simulation (:mod:`.economy`): invented
jobs for its worker, held results, ground commitments, skipped work."""

from __future__ import annotations

from collections import deque

from aipg.models import SamplingParams
from aipg.pouw.records import Job
from aipg.wire import Identity

from .economy_world import LLM_MODEL, SELF_JOBS_PER_BLOCK, Operator, ident
from .world import signed_assignment


class AdversaryMoves:
    """Mixed into :class:`~.economy.Economy` (its state, queues and keys)."""

    def _release(self, now: int) -> None:
        """Invented jobs whose draw is out go to the adversary's worker all the same."""
        keep = []
        for w, job in self.waiting:
            if not self._drawn(job):
                keep.append((w, job))
                continue
            if now > job.deadline_ms:
                continue
            a = signed_assignment(self._gateway_of(job), job, w.identity, height=self.state.height,
                                  assigned_ms=now, deadline_ms=job.deadline_ms)  # fmt: skip
            w.queue.append([job, a, self._macs(job)])
        self.waiting = keep

    def _gateway_of(self, job: Job) -> Identity:
        g = self.adversary[0].identity
        return g if job.signer == g.public_bytes else self._sybil_gateways[job.signer]

    def _self_deal(self, now: int, model: bytes) -> None:
        """Invent free jobs for the adversary's own workers, up to their spare capacity
        (a long prompt and one output token: the most work units per job). With
        ``sybil_gateways`` each job is signed by a fresh, unbonded gateway key."""
        for w in self.adversary:
            backlog = sum(m for _, _, m in w.queue)
            backlog += sum(self._macs(j) for x, j in self.waiting if x is w)
            for _ in range(SELF_JOBS_PER_BLOCK):
                if backlog >= 2 * w.capacity:
                    break
                gw = self.adversary[0].identity
                if self.cfg.strategy == "sybil_gateways":
                    gw = ident(f"sybil-gateway/{self.adversary_nonce}")
                    self._sybil_gateways[gw.public_bytes] = gw
                job = self._job(gw, now, model, client=self.adv_client.address.raw,
                                prompt="p" * 370, llm=SamplingParams(max_tokens=1))  # fmt: skip
                self._commit(job)
                self.waiting.append((w, job))
                backlog += self._macs(job)

    def _snipe(self, now: int, idle: bool) -> None:
        """Hold invented jobs' results through an idle spell, then release them all in
        the first block after it (when the pool used to be largest)."""
        if idle:
            self._self_deal(now, LLM_MODEL)
            mine = self.adv_client.address.raw
            for w in self.adversary:
                held = [q for q in w.queue if q[0].client == mine]
                self.sniped += [(w, q) for q in held]
                self.worker_macs += sum(q[2] for q in held)  # run now, reported later
                w.queue = deque(q for q in w.queue if q[0].client != mine)
        elif self.sniped:
            for w, (job, a, _) in self.sniped:
                if now <= job.deadline_ms:
                    self._finish(w, job, a, now)
            self.sniped = []

    def _grind(self, now: int, commit: bool) -> None:
        """Commit many candidate jobs (every fourth block), then, once each one's beacon
        is out, certify work never done for those whose committee is the adversary's
        (two thirds of the seated weight), claiming the most tokens the model allows.
        The beacon comes after the commitment (D56), so nothing is ground but the number
        of commitments."""
        gw, worker = self.adversary[0], self.adversary[-1]
        s = self.state
        if commit:
            for _ in range(50):
                job = self._job(gw.identity, now, LLM_MODEL, client=self.adv_client.address.raw,
                                prompt="p" * 200, llm=SamplingParams(max_tokens=183))  # fmt: skip
                self._commit(job)
                self.grinds.append(job)
                self.ground += 1
        adv = {o.key for o in self.adversary}
        keep = []
        for job in self.grinds:
            if not self._drawn(job):
                keep.append(job)
                continue
            a = signed_assignment(gw.identity, job, worker.identity, height=s.height,
                                  assigned_ms=now, deadline_ms=job.deadline_ms)  # fmt: skip
            c = self._committee(job, a)
            if c is None:
                continue
            committee, snap = c
            held = sum(snap[k] for k in committee.members if k in adv)
            if 3 * held >= 2 * sum(snap[k] for k in committee.members):
                self._finish(worker, job, a, now, forged=True)
        self.grinds = keep

    def _gambles(self, w: Operator, job: Job) -> bool:
        """``audit_gambling``: the adversary's worker skips half of its jobs (those whose
        id is even) and claims them all the same, betting on the draw (D80)."""
        return self.cfg.strategy == "audit_gambling" and w.adversary and job.id[-1] % 2 == 0
