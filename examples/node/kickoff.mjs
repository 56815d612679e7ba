// Kick off a swarmbus workflow from Node.js and print its result.
//
// The whole protocol: publish {"goal": "..."} through JetStream on
// swarm.<namespace>.<workflow_id>.task, then read swarm.<namespace>.<workflow_id>.result
// (its body always has "status"). No swarmbus code is needed on this side.
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

const nc = await connect({ servers: values.nats.split(","), name: "node-kickoff" });
const js = nc.jetstream();

// Nats-Msg-Id makes a retried publish land once.
await js.publish(
  `swarm.${ns}.${workflowId}.task`,
  JSON.stringify({ goal }),
  { msgID: `task-${workflowId}` },
);
console.error(`submitted ${workflowId}`);

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
