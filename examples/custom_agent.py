"""A custom agent in its own process: a word counter that audits text and code.

It takes its own message type on its own topic (``audit.request``) and also reads
every code submission of the built-in workflow (the work for its ``review`` step, on
``step.review``), next to the reviewer (a different agent type gets every message).
Its findings go to ``audit.report``.

Run it (start several to share the work; each is a replica of ``word_counter``)::

    python examples/custom_agent.py --nats nats://127.0.0.1:4222 --namespace default

Ask it from anywhere, in any language, by publishing JSON through JetStream; the topic
implies the type, so no header is needed::

    nats pub swarm.default.wf1.audit.request '{"text": "hello hello world"}'
    nats sub 'swarm.default.*.audit.report'

Stop it with Ctrl-C or SIGTERM: in-flight messages finish, then it exits.
"""

from __future__ import annotations

import argparse
from collections import Counter

import anyio
from pydantic import Field

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.protocols import Message, Work, message_type


@message_type("example.AuditRequest", topics=("audit.request",))
class AuditRequest(Message):
    text: str


@message_type("example.AuditReport", topics=("audit.report",))
class AuditReport(Message):
    words: int
    lines: int
    top_words: list[str] = Field(description="The most frequent words, most frequent first.")
    todos: int = Field(0, description="Lines that mention TODO or FIXME.")


def audit(text: str) -> AuditReport:
    words = text.lower().split()
    return AuditReport(
        words=len(words),
        lines=len(text.splitlines()),
        top_words=[w for w, _ in Counter(words).most_common(3)],
        todos=sum("TODO" in line or "FIXME" in line for line in text.splitlines()),
    )


class WordCounter(Agent):
    """Replicas share ``audit.request`` and ``step.review`` messages; each is handled once."""

    name = "word_counter"

    @handles("audit.request")
    async def on_request(self, msg: AuditRequest, ctx: Context[AuditRequest]) -> None:
        # ctx.publish derives the message id from the input's: a redelivered request
        # (say this process died after publishing) does not produce a second report.
        await ctx.publish(audit(msg.text))

    @handles("step.review")
    async def on_code(self, msg: Work, ctx: Context[Work]) -> None:
        code = msg.state.code
        files = code.files if code else []
        report = audit("\n".join(f.content for f in files))
        ctx.log.info("audited code", files=len(files), todos=report.todos)
        await ctx.publish(report)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the word counter agent.")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    swarm = Swarm([WordCounter()], nats=args.nats, namespace=args.namespace)
    anyio.run(swarm.serve)


if __name__ == "__main__":
    main()
