// Faults and throttling against the unchanged SDK: the KeyClient's own retry policy rides out
// injected 503s and 429s (/_emulator/faults) and the Key Vault service limits (--throttle azure),
// and the calls succeed.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import { T, startServer, uniqueName, withWire } from "./helpers.mjs";

let server;

before(async () => {
  server = await startServer({ extraArgs: ["--throttle", "azure"] });
});

after(async () => {
  await server?.stop();
});

async function addFault(rule) {
  const r = await server.raw("POST", "/_emulator/faults", { body: rule });
  assert.equal(r.status, 201, `POST /_emulator/faults -> ${r.status} ${r.text}`);
  return r.json;
}

/** Statuses the SDK saw for requests whose URL contains `part`, in order. */
function statusesFor(mark, part) {
  return server.recorder
    .since(mark)
    .filter((e) => e.url.includes(part) && typeof e.status === "number" && e.status !== 401)
    .map((e) => e.status);
}

describe("SDK retries", () => {
  it("rides out injected 503s and a 429 and succeeds", T, async () => {
    const client = server.keyClient("contoso-cmk");
    const name = uniqueName("faulted");
    await withWire(server, async () => {
      await addFault({ fault: "429", path: `/keys/${name}/create`, count: 1, retryAfter: 1 });
      const mark = server.recorder.mark();
      const key = await client.createRsaKey(name, { keySize: 2048 });
      assert.equal(key.name, name);
      assert.deepEqual(statusesFor(mark, `/keys/${name}/create`), [429, 200]);

      await addFault({ fault: "503", path: `/keys/${name}`, method: "GET", count: 2, retryAfter: 0 });
      const mark2 = server.recorder.mark();
      const got = await client.getKey(name);
      assert.equal(got.id, key.id);
      assert.deepEqual(statusesFor(mark2, `/keys/${name}`), [503, 503, 200]);
    });
    const list = await server.raw("GET", "/_emulator/faults");
    assert.deepEqual(
      list.json.value.map((r) => [r.fault, r.hits]),
      [
        ["429", 1],
        ["503", 2],
      ],
    );
    await server.raw("DELETE", "/_emulator/faults");
  });

  it("waits out the vault's create limit under --throttle azure", T, async () => {
    // RSA-HSM keys: 10 creates per vault per 10 s; 11 at once -> one 429 with Retry-After,
    // which the SDK honours before it retries
    const client = server.keyClient("scratch");
    const names = Array.from({ length: 11 }, () => uniqueName("limit"));
    const mark = server.recorder.mark();
    // the first call alone: a fresh client's concurrent first requests race in the SDK's own
    // challenge handling (one was sent with its token but without its body)
    const first = await withWire(server, () => client.createKey(names[0], "RSA-HSM", { keySize: 2048 }));
    const rest = await withWire(server, () =>
      Promise.all(names.slice(1).map((n) => client.createKey(n, "RSA-HSM", { keySize: 2048 }))),
    );
    const keys = [first, ...rest];
    assert.equal(keys.length, 11);
    for (const [i, k] of keys.entries()) assert.equal(k.name, names[i]);
    const creates = server.recorder
      .since(mark)
      .filter((e) => e.url.includes("/create") && typeof e.status === "number" && e.status !== 401);
    const throttled = creates.filter((e) => e.status === 429);
    assert.ok(throttled.length >= 1, "at least one create was throttled");
    assert.match(throttled[0].responseBody, /"code":"Throttled"/);
    assert.equal(creates.filter((e) => e.status === 200).length, 11);
  });
});
