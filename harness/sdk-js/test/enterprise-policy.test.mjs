// Microsoft.PowerPlatform/enterprisePolicies through the unchanged generic ARM client
// (@azure/arm-resources ResourceManagementClient, the by-id calls that send
// `PUT //subscriptions/...`): create the policy of Microsoft's CMK template (seed 004) for a
// key made with @azure/keyvault-keys, read it back, refuse a forbidden change, delete it.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import { ResourceManagementClient } from "@azure/arm-resources";

import { T, startServer, expectRestError, withWire, assertNo5xx, recordingCredential, uniqueName, VERSION_RE } from "./helpers.mjs";

const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const API = "2020-10-30";
const POLL = { updateIntervalInMs: 50 };
const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let server;
let arm;

const vaultId = (name) => `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.KeyVault/vaults/${name}`;
const policyId = (name) => `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.PowerPlatform/enterprisePolicies/${name}`;

function template({ location = "unitedstates", keyName, keyVersion }) {
  return {
    location,
    kind: "Encryption",
    identity: { type: "SystemAssigned" },
    properties: {
      lockbox: null,
      encryption: { state: "Enabled", keyVault: { id: vaultId("contoso-cmk"), key: { name: keyName, version: keyVersion } } },
      networkInjection: null,
    },
  };
}

before(async () => {
  server = await startServer();
  arm = new ResourceManagementClient(recordingCredential(), SUB, {
    endpoint: server.url,
    ...server.clientOptions(undefined, {}),
  });
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("Microsoft.PowerPlatform/enterprisePolicies (generic ARM client)", () => {
  it("create from the CMK template, get, refuse a location change, delete", T, async () => {
    const keys = server.keyClient("contoso-cmk");
    const key = await keys.createRsaKey(uniqueName("pp-cmk"), { keySize: 2048 });
    assert.match(key.properties.version, VERSION_RE);
    const name = uniqueName("ep");
    const id = policyId(name);

    await withWire(server, async () => {
      const created = await arm.resources.beginCreateOrUpdateByIdAndWait(
        id,
        API,
        template({ keyName: key.name, keyVersion: key.properties.version }),
        POLL,
      );
      assert.equal(created.id, id);
      assert.equal(created.name, name);
      assert.equal(created.type, "Microsoft.PowerPlatform/enterprisePolicies");
      assert.equal(created.location, "unitedstates");
      assert.equal(created.kind, "Encryption");
      assert.equal(created.identity.type, "SystemAssigned");
      assert.match(created.identity.principalId, GUID_RE);
      assert.match(created.identity.tenantId, GUID_RE);
      const props = created.properties;
      assert.match(props.systemId, /^\/regions\/unitedstates\/providers\/Microsoft\.PowerPlatform\/enterprisePolicies\/[0-9a-f-]{36}$/);
      assert.deepEqual(props.encryption, {
        state: "Enabled",
        keyVault: { id: vaultId("contoso-cmk"), key: { name: key.name, version: key.properties.version } },
      });
      assert.equal(props.lockbox, null);
      assert.equal(props.networkInjection, null);
      assert.equal(props.healthStatus, "Undetermined");

      const got = await arm.resources.getById(id, API);
      assert.equal(got.properties.systemId, props.systemId);
      assert.equal(got.identity.principalId, created.identity.principalId);

      // the spec's api-version answers too
      const preview = await arm.resources.getById(id, "2020-10-30-preview");
      assert.equal(preview.properties.systemId, props.systemId);

      // re-deploying the same template is an update (200) that keeps systemId and identity
      const again = await arm.resources.beginCreateOrUpdateByIdAndWait(
        id,
        API,
        template({ keyName: key.name, keyVersion: key.properties.version }),
        POLL,
      );
      assert.equal(again.properties.systemId, props.systemId);
      assert.equal(again.identity.principalId, created.identity.principalId);
    });

    await expectRestError(
      server,
      arm.resources.beginCreateOrUpdateByIdAndWait(id, API, template({ location: "europe", keyName: key.name, keyVersion: key.properties.version }), POLL),
      { status: 400, code: "PropertyChangeNotAllowed", message: /key vault id, key name and key version/ },
    );
    await expectRestError(server, arm.resources.getById(id, "2021-04-01"), { status: 400, code: "InvalidApiVersionParameter" });

    await withWire(server, async () => {
      await arm.resources.beginDeleteByIdAndWait(id, API, POLL);
    });
    await expectRestError(server, arm.resources.getById(id, API), { status: 404, code: "ResourceNotFound" });
  });

  it("a location outside the Power Platform regions is refused with the list", T, async () => {
    await expectRestError(
      server,
      arm.resources.beginCreateOrUpdateByIdAndWait(policyId(uniqueName("ep-bad")), API, template({ location: "eastus", keyName: "k", keyVersion: "" }), POLL),
      { status: 400, code: "LocationNotAvailableForResourceType", message: /unitedstates.*europe/ },
    );
  });
});
