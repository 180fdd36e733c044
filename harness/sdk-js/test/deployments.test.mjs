// Microsoft.Resources/deployments with the unchanged @azure/arm-resourcesdeployments
// DeploymentsClient: a key vault template (parameters, variables, outputs through reference()),
// a failing deployment (the provider's error reaches the poller), and Microsoft's
// enterprise-policy template from the CMK docs (seed 004, fixtures/templates) with its
// placeholders filled from fixtures/templates/enterprise-policy.parameters.json.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { DeploymentsClient } from "@azure/arm-resourcesdeployments";

import { T, startServer, withWire, assertNo5xx, recordingCredential, uniqueName } from "./helpers.mjs";

const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const POLL = { updateIntervalInMs: 50 };
const here = path.dirname(fileURLToPath(import.meta.url));
const templates = path.join(here, "..", "..", "..", "fixtures", "templates");

let server;
let client;
let credential;

const vaultTemplate = {
  $schema: "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
  contentVersion: "1.0.0.0",
  parameters: {
    vaultName: { type: "string", minLength: 3, maxLength: 24 },
    location: { type: "string", defaultValue: "[resourceGroup().location]" },
  },
  variables: { tenantId: "[subscription().tenantId]" },
  resources: [
    {
      type: "Microsoft.KeyVault/vaults",
      apiVersion: "2024-11-01",
      name: "[parameters('vaultName')]",
      location: "[parameters('location')]",
      properties: {
        tenantId: "[variables('tenantId')]",
        sku: { family: "A", name: "standard" },
        accessPolicies: [],
        enableSoftDelete: true,
        softDeleteRetentionInDays: 7,
      },
    },
  ],
  outputs: {
    vaultUri: { type: "string", value: "[reference(parameters('vaultName')).vaultUri]" },
  },
};

/** Fills the seed template's {placeholders} with JSON values, as the docs tell a human to. */
function fillPlaceholders(text, values) {
  return text.replace(/\{([A-Za-z][A-Za-z ]*)\}/g, (m, name) => {
    if (!(name in values)) throw new Error(`no value for placeholder ${m}`);
    return JSON.stringify(values[name]);
  });
}

before(async () => {
  server = await startServer();
  credential = recordingCredential();
  client = new DeploymentsClient(credential, SUB, {
    endpoint: server.url,
    ...server.clientOptions(undefined, {}),
  });
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("Microsoft.Resources/deployments (DeploymentsClient)", () => {
  it("deploys a key vault template and reports outputs, operations and the record", T, async () => {
    const vaultName = uniqueName("tpl").slice(0, 20).replace(/[^a-z0-9-]/gi, "");
    const name = uniqueName("dep-kv");
    await withWire(server, async () => {
      const result = await client.deployments.createOrUpdate(
        RG,
        name,
        { properties: { mode: "Incremental", template: vaultTemplate, parameters: { vaultName: { value: vaultName } } } },
        POLL,
      );
      assert.equal(result.properties.provisioningState, "Succeeded");
      assert.equal(result.properties.outputs.vaultUri.value, `https://${vaultName}.vault.localhost:${server.port}/`);
      assert.equal(result.properties.outputResources.length, 1);
      assert.match(result.properties.outputResources[0].id, new RegExp(`/vaults/${vaultName}$`));

      const got = await client.deployments.get(RG, name);
      assert.equal(got.name, name);
      assert.equal(got.properties.provisioningState, "Succeeded");
      assert.ok(got.properties.correlationId);
      assert.equal((await client.deployments.checkExistence(RG, name)).body, true);

      const ops = [];
      for await (const op of client.deploymentOperations.list(RG, name)) ops.push(op);
      assert.equal(ops.length, 1);
      assert.equal(ops[0].properties.targetResource.resourceType, "Microsoft.KeyVault/vaults");

      const names = [];
      for await (const d of client.deployments.listByResourceGroup(RG)) names.push(d.name);
      assert.ok(names.includes(name));

      await client.deployments.delete(RG, name, POLL);
      assert.equal((await client.deployments.checkExistence(RG, name)).body, false);
    });
    // DeploymentsClient asks for the public ARM audience whatever the endpoint
    assert.ok(credential.calls.some((c) => c.scopes.includes("https://management.azure.com/.default")));
  });

  it("a resource the provider refuses fails the deployment with its error", T, async () => {
    const name = uniqueName("dep-bad");
    await withWire(server, async () => {
      await assert.rejects(
        client.deployments.createOrUpdate(
          RG,
          name,
          { properties: { mode: "Incremental", template: vaultTemplate, parameters: { vaultName: { value: "9-not--valid" } } } },
          POLL,
        ),
        (e) => {
          assert.match(String(e.code ?? e.message), /DeploymentFailed|VaultNameNotValid|failed/i);
          return true;
        },
      );
      const got = await client.deployments.get(RG, name);
      assert.equal(got.properties.provisioningState, "Failed");
      assert.equal(got.properties.error.code, "DeploymentFailed");
      assert.equal(got.properties.error.details[0].details[0].code, "VaultNameNotValid");
    });
  });

  it("refuses templateLink: only inline templates", T, async () => {
    await assert.rejects(
      client.deployments.createOrUpdate(
        RG,
        uniqueName("dep-link"),
        { properties: { mode: "Incremental", templateLink: { uri: "https://example.com/t.json" } } },
        POLL,
      ),
      (e) => e.statusCode === 400 && /inline templates/.test(e.message),
    );
  });

  it("deploys Microsoft's enterprise-policy template (seed 004) as is, placeholders filled", T, async (t) => {
    const file = JSON.parse(readFileSync(path.join(templates, "enterprise-policy.parameters.json"), "utf8"));
    const values = Object.fromEntries(Object.entries(file.parameters).map(([k, v]) => [k, v.value]));
    // the key must exist: create it with the data plane and take its current version
    const keys = server.keyClient("contoso-cmk");
    const key = await keys.createRsaKey(values.keyName, { keySize: 2048 });
    if (!values.keyVersion) values.keyVersion = key.properties.version;
    values.EnterprisePolicyName = uniqueName(values.EnterprisePolicyName);
    const template = JSON.parse(fillPlaceholders(readFileSync(path.join(templates, "enterprise-policy.json"), "utf8"), values));
    assert.equal(template.resources[0].type, "Microsoft.PowerPlatform/enterprisePolicies");

    const name = uniqueName("dep-ep");
    let result;
    await withWire(server, async () => {
      result = await client.deployments.createOrUpdate(
        RG,
        name,
        { properties: { mode: "Incremental", template, parameters: {} } },
        POLL,
      ).catch((e) => e);
    });
    if (result instanceof Error) throw result;
    assert.equal(result.properties.provisioningState, "Succeeded");
    const id = result.properties.outputResources[0].id;
    assert.match(id, new RegExp(`/providers/Microsoft.PowerPlatform/enterprisePolicies/${values.EnterprisePolicyName}$`));
  });
});
