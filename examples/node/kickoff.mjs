// Kick off a swarmbus workflow from Node.js and print its result.
//
// The whole protocol: publish {"goal": "..."} through JetStream on
// swarm.<namespace>.<workflow_id>.task, then read swarm.<namespace>.<workflow_id>.result
// (its body always has "status"). No swarmbus code is needed on this side.
//
// A workflow id is single-use: this same command run again (same id, same goal) joins the
// workflow and prints its result; another task under a used id is refused (exit 2).
//
//   npm install            (in this folder: installs the official `nats` client)
//   node kickoff.mjs --nats nats://127.0.0.1:4222 --namespace default "Write fizzbuzz(n)"
import { connect } from "nats";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    nats: { type: "string", default: "nats://127.0.0.1:4222" },
    namespace: { type: "string", default: "default" },
    id: { type: "string" },
    timeout: { type: "string", default: "120" },
  },
});
const goal = positionals.join(" ");
if (!goal) {
  console.error('usage: node kickoff.mjs [--nats URL] [--namespace NS] "goal"');
  process.exit(2);
}
const ns = values.namespace;
const workflowId = values.id ?? randomUUID().replaceAll("-", "");
const stream = `SWARM_${ns.toUpperCase()}`;

const WRONG_LAST_SEQUENCE = 10071; // JetStream: the subject already holds a message

const nc = await connect({ servers: values.nats.split(","), name: "node-kickoff" });
const js = nc.jetstream();

// Nats-Msg-Id makes a retried publish land once; Nats-Expected-Last-Subject-Sequence: 0
// makes the server refuse a second task under this workflow id.
const subject = `swarm.${ns}.${workflowId}.task`;
const task = JSON.stringify({ goal });
try {
  await js.publish(subject, task, {
    msgID: `task-${workflowId}`,
    expect: { lastSubjectSequence: 0 },
  });
  console.error(`submitted ${workflowId}`);
} catch (err) {
  if (err?.api_error?.err_code !== WRONG_LAST_SEQUENCE) throw err;
  // A task is stored under this id already: ours (this command run again) joins it.
  const jsm = await nc.jetstreamManager();
  const stored = await jsm.streams.getMessage(stream, { last_by_subj: subject });
  if (stored.string() !== task) {
    console.error(`error: workflow id ${workflowId} is taken by another task in namespace ` +
      `${ns}; choose another --id (or none for a random one)`);
    await nc.close();
    process.exit(2);
  }
  console.error(`joined ${workflowId} (already submitted)`);
}

// An ordered consumer on the result subject reads it even if it was published
// before we started listening (the stream keeps it).
const consumer = await js.consumers.get(stream, {
  filterSubjects: [`swarm.${ns}.${workflowId}.result`],
});
const deadline = Date.now() + Number(values.timeout) * 1000;
let result = null;
while (result === null && Date.now() < deadline) {
  const msg = await consumer.next({ expires: 5000 });
  if (msg) result = msg.json();
}
await nc.close();
if (result === null) {
  console.error("no result before the timeout");
  process.exit(1);
}
console.log(JSON.stringify({ workflow_id: workflowId, ...result }));
process.exit(result.status === "approved" ? 0 : 1);
