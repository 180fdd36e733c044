#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ from the repository's own traffic:
the conformance suites (fixtures/conformance: real requests and bodies the SDK-shaped clients
send), the demo world, the enterprise-policy template and its parameters, the template
expressions of tests/test_template.c, plus a few hand-written seeds per target. Idempotent;
file names are content hashes. Run from anywhere: python3 fuzz/gen_corpus.py"""
import base64, glob, hashlib, json, os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
SUB = "00000000-0000-4000-8000-000000000001"
TENANT = "72f988bf-0000-4000-8000-00000000c0de"
ENV1 = "a1b2c3d4-0000-4000-8000-000000000101"

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

# values for the conformance suites' ${variables}: plausible, not necessarily accepted
VARS = {
    "subscription": SUB, "rg": "cmk-rg", "run": "fz1", "tenant": TENANT,
    "version": "0123456789abcdef0123456789abcdef", "env": ENV1, "ra": "3f2b6c1e-0000-4000-8000-0000000000aa",
    "account": "00000000-0000-4000-8000-000000000001",
    "ct": b64u(bytes(range(256))), "lw256": b64u(bytes(256)), "lw1": b64u(bytes(256)),
    "lw15": b64u(bytes(256)), "w15": b64u(bytes(256)), "iw": b64u(bytes(256)),
    "sig": b64u(bytes(256)), "psig": b64u(bytes(256)), "digest": b64u(bytes(32)),
    "kid": "https://localhost:8443/keys/demo-key/0123456789abcdef0123456789abcdef",
    "backup": b64u(b'{"v":1}'), "blob": b64u(b'{"v":1}'),
}

def subst(s):
    return re.sub(r"\$\{([^}]+)\}", lambda m: VARS.get(m.group(1), "x" + m.group(1)), s)

def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def filled_template():
    """Microsoft's CMK template with its {placeholders} filled, as cmkharness fill_template does."""
    text = open(os.path.join(ROOT, "fixtures", "templates", "enterprise-policy.json")).read()
    values = iter(["fzpol", "unitedstates", "/subscriptions/%s/resourceGroups/cmk-rg/providers/"
                   "Microsoft.KeyVault/vaults/contoso-cmk" % SUB, "demo-key", ""] + ["x"] * 20)
    return json.loads(re.sub(r"\{[A-Za-z][^\"{}]*\}", lambda m: json.dumps(next(values)), text))

def body_text(r):
    if "body" in r:
        text = json.dumps(r["body"], separators=(",", ":"))
        text = text.replace('"${ep_template}"', json.dumps(filled_template(), separators=(",", ":")))
        return subst(text)
    if "bodyText" in r:
        return subst(r["bodyText"])
    return None

# ---- fuzz_json_bodies: the family index must follow FAMILIES[] in fuzz_json_bodies.c ----
FAMILY_PATTERNS = [
    ("POST", r"^/keys/[^/]+/create"), ("PUT", r"^/keys/[^/?]+\?"), ("PATCH", r"^/keys/"),
    ("POST", r"/wrapkey"), ("POST", r"/unwrapkey"), ("POST", r"/encrypt"), ("POST", r"/decrypt"),
    ("POST", r"/sign\?"), ("POST", r"/verify\?"), ("POST", r"^/keys/restore"),
    ("PUT", r"/rotationpolicy"), ("POST", r"/release"), ("POST", r"^/rng"),
    ("PUT", r"/resourcegroups/[^/]+\?"), ("PUT", r"Microsoft.KeyVault/vaults/[^/]+\?"),
    ("PATCH", r"Microsoft.KeyVault/vaults/[^/]+\?"), ("PUT", r"accessPolicies/add"),
    ("PUT", r"accessPolicies/replace"), ("PUT", r"accessPolicies/remove"),
    ("POST", r"checkNameAvailability"), ("PUT", r"roleAssignments/"),
    ("PUT", r"enterprisePolicies/[^/]+\?"), ("PATCH", r"enterprisePolicies/[^/]+\?"),
    ("PUT", r"deployments/[^/]+\?"), ("POST", r"deployments/[^/]+/validate"),
    ("POST", r"^/providers/Microsoft.BusinessAppPlatform/environments\?"),
    ("POST", r"Encryption/link"), ("POST", r"Encryption/unlink"),
    ("POST", r"api/data/v9.2/accounts$"), ("PATCH", r"api/data/v9.2/accounts\("),
    ("POST", r"/components\?"), ("PUT", r"/components/[^/]+/records/"),
    ("POST", r"oauth2/v2.0/token"), ("POST", r"oauth2/token"), ("POST", r"^/_emulator/clock"),
    ("POST", r"^/_emulator/tokens"),
]

def family_of(method, path):
    for i, (m, pat) in enumerate(FAMILY_PATTERNS):
        if m == method and re.search(pat, path, re.I):
            return i
    return None

def req_text(method, path, host, headers, body):
    lines = ["%s %s" % (method, path), "Host: %s" % host, "Authorization: $TOKEN"]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, subst(str(v))))
    if body is not None:
        lines.append("Content-Type: application/json")
    return "\n".join(lines) + "\n\n" + (body or "")

def from_conformance():
    for f in sorted(glob.glob(os.path.join(ROOT, "fixtures", "conformance", "*.json"))):
        suite = json.load(open(f))
        for c in suite["cases"]:
            r = c.get("request")
            if not r or not r.get("method"):
                continue
            method = r["method"]
            host, path = "localhost:8443", None
            if "path" in r:
                path = subst(r["path"])
            elif "url" in r:
                u = subst(r["url"])
                m = re.match(r"x?(instance|prod_instance)(.*)", u)
                if u.startswith("xinstance") or u.startswith("xprod_instance"):
                    host, path = ENV1 + ".crm.localhost:8443", "/" + u.split("instance", 1)[1]
                elif u.startswith("xtoken_endpoint"):
                    path = "/%s/oauth2/v2.0/token" % TENANT
                else:
                    continue
            body = body_text(r)
            if "form" in r:
                body = "&".join("%s=%s" % (k, subst(v)) for k, v in r["form"].items())
            write("fuzz_request", req_text(method, path, host, r.get("headers"), body))
            fam = family_of(method, path)
            if fam is not None and body is not None:
                write("fuzz_json_bodies", bytes([fam]) + body.encode())

def hand_written():
    J = lambda o: json.dumps(o, separators=(",", ":"))
    bodies = {
        1: J({"key": {"kty": "RSA", "n": b64u(b"\xc1" * 256), "e": "AQAB", "d": b64u(b"\x11" * 256),
                      "p": b64u(b"\xe1" * 128), "q": b64u(b"\xd1" * 128)}, "hsm": False}),
        9: J({"value": b64u(b'{"version":1,"vault":"cmkemu","key":"demo-key"}')}),
        10: J({"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Rotate"}}],
               "attributes": {"expiryTime": "P90D"}}),
        11: J({"target": "attestation-token", "enc": "CKM_RSA_AES_KEY_WRAP"}),
        13: J({"location": "eastus", "tags": {"a": "b"}}),
        20: J({"properties": {"roleDefinitionId": "/subscriptions/%s/providers/Microsoft.Authorization/"
                              "roleDefinitions/e147488a-f6f5-4113-8e2d-b22465e65bf6" % SUB,
                              "principalId": "0b000003-0000-4000-8000-00000000b003",
                              "principalType": "ServicePrincipal"}}),
        22: J({"tags": {"x": "y"}, "properties": {"encryption": {"state": "Enabled"}}}),
        25: J({"properties": {"displayName": "Fuzz", "environmentSku": "Sandbox",
                              "databaseType": "CommonDataService"}, "location": "unitedstates"}),
        28: J({"name": "Fuzz Coffee", "revenue": 1, "accountnumber": "FZ-1"}),
        29: J({"revenue": 2}),
        30: J({"kind": "commerceScaleUnit", "name": "CSU Fuzz", "geo": "europe"}),
        31: J({"register": "POS-FZ", "shift": "open"}),
        32: "grant_type=client_credentials&client_id=0a000001-0000-4000-8000-00000000a001"
            "&client_secret=kv-admin-secret&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        33: "grant_type=password&username=kvadmin%40contoso.local&password=kv-admin-password"
            "&resource=https%3A%2F%2Fmanagement.azure.com",
        34: J({"advance": "PT1H"}),
        35: J({"principal": "0b000001-0000-4000-8000-00000000b001", "audience": "https://vault.azure.net",
               "lifetime": 3600}),
    }
    for fam, body in bodies.items():
        write("fuzz_json_bodies", bytes([fam]) + body.encode())
    for t in ["/", "//keys//demo-key//?api-version=7.5&&a=%41%2", "/keys?api-version=7.5&" +
              "&".join("q%d=%d" % (i, i) for i in range(40)), "/%7e/%zz/%", "?a=b+c%20d",
              "/_emulator/ui/relay/localhost/keys?api-version=7.5",
              "/_emulator/health", "/%s/v2.0/.well-known/openid-configuration" % TENANT]:
        write("fuzz_request", req_text("GET", t, "localhost:8443", None, None))
    write("fuzz_request", "GET /keys/demo-key?api-version=7.5\nHost: CMKEMU.vault.localhost:8443\n"
          "Authorization: Bearer x\n\n")
    write("fuzz_request", "GET /keys?api-version=7.5\nHost: [::1]:8443\n\n")

def b64url_seeds():
    for s in [b"", b"f", b"fo", b"foo", b"foobar", bytes(range(256))]:
        write("fuzz_b64url", b64u(s))
        write("fuzz_b64url", base64.b64encode(s))
    write("fuzz_b64url", "a===")
    write("fuzz_b64url", "-_-_")

def jwt_seeds():
    hdr = '{"typ":"JWT","alg":"RS256","kid":"$KID"}'
    base = {"aud": "https://vault.azure.net", "iss": "https://sts.windows.net/%s/" % TENANT,
            "iat": 1700000000, "nbf": 1700000000, "exp": 4102444800,
            "oid": "0b000001-0000-4000-8000-00000000b001", "tid": TENANT,
            "sub": "0b000001-0000-4000-8000-00000000b001", "appid": "0a000001-0000-4000-8000-00000000a001",
            "idtyp": "app", "ver": "1.0"}
    variants = [base, dict(base, aud="https://management.azure.com/"), dict(base, aud="https://localhost:8443"),
                dict(base, exp=1), dict(base, nbf=4102444000), dict(base, tid="other"),
                {k: v for k, v in base.items() if k != "oid"}, dict(base, aud="x" * 600)]
    for fam, v in enumerate(variants):
        write("fuzz_jwt", bytes([1, fam]) + (hdr + "\n" + json.dumps(v, separators=(",", ":"))).encode())
    write("fuzz_jwt", bytes([1, 0]) + b'{"alg":"none","kid":"$KID"}\n{}')
    write("fuzz_jwt", bytes([1, 0]) + b'{"alg":"HS256","kid":"$KID"}\n{}')
    write("fuzz_jwt", bytes([0, 0]) + ("%s.%s.%s" % (b64u(hdr.encode()), b64u(json.dumps(base).encode()),
                                                     b64u(bytes(256)))).encode())
    write("fuzz_jwt", bytes([0, 1]) + b"a.b.c")
    write("fuzz_jwt", bytes([2, 2]) + bytes([10, 65, 200, 46]))

def world_seeds():
    write("fuzz_world", open(os.path.join(ROOT, "fixtures", "demo-world.json"), "rb").read())
    demo = json.load(open(os.path.join(ROOT, "fixtures", "demo-world.json")))
    small = dict(demo)
    small["vaults"] = [dict(v, keys=[]) for v in demo["vaults"]]
    write("fuzz_world", json.dumps(small, separators=(",", ":")))
    for part in ["principals", "vaults", "roleAssignments", "environments", "resourceGroups"]:
        one = {"tenant": demo["tenant"], "subscription": demo["subscription"], part: demo.get(part, [])}
        if part == "vaults":
            one["vaults"] = small["vaults"]
        if part == "roleAssignments":
            one["vaults"] = small["vaults"]
            one["principals"] = demo["principals"]
        write("fuzz_world", json.dumps(one, separators=(",", ":")))
    write("fuzz_world", json.dumps({"vaults": [{"name": "v1", "keys": [{"name": "k", "size": 1}]}],
                                    "enterprisePolicies": [{"name": "ep", "location": "unitedstates",
                                                            "keyVault": "v1", "keyName": "k"}]}))
    write("fuzz_world", "{}")

def template_seeds():
    t = filled_template()
    p = json.load(open(os.path.join(ROOT, "fixtures", "templates", "enterprise-policy.parameters.json")))
    write("fuzz_template", b"\0" + json.dumps({"template": t, "parameters": p.get("parameters", p)}).encode())
    write("fuzz_template", b"\0" + json.dumps({"properties": {"template": t, "mode": "Incremental"}}).encode())
    src = open(os.path.join(ROOT, "tests", "test_template.c")).read()
    for m in re.finditer(r'"(\[(?:[^"\\]|\\.)*\])"', src):
        expr = m.group(1).encode().decode("unicode_escape")
        write("fuzz_template", b"\1" + expr.encode())
    for e in ["[concat('a', parameters('name'), variables('v1'))]", "[parameters('obj').a.b[1]]",
              "[reference(resourceId('Microsoft.KeyVault/vaults', 'kv1'), '2023-07-01').vaultUri]",
              "[if(equals(length(parameters('arr')), 2), toUpper('x'), null())]",
              "[format('{0}-{1}', uniqueString(resourceGroup().id), guid('a', 'b'))]",
              "[int(string(variables('big')))]"]:
        write("fuzz_template", b"\1" + e.encode())

def jflat_seeds():
    """Flat record bodies (what the PATCH fast path takes) and near misses."""
    for b in [b'{}', b'{"name":"Fabrikam","revenue":5,"active":true,"note":null}',
              b' { "a" : -0.5e-3 , "b" : "x" } ', b'{"caf\\u00e9":"cr\\u00e8me \\ud83d\\ude00"}',
              '{"caf\u00e9":"\u20ac \U0001F600"}'.encode(),
              b'{"y":9223372036854775807,"z":-9223372036854775808,"w":1e299}',
              b'{"a":1,"\\u0061":2}', b'{"a":"\\ud800"}', b'{"a":[1]}', b'{"a":01}',
              b'{"x":"\\"quoted\\" \\\\ \\/ \\b\\f\\n\\r\\t"}']:
        write("fuzz_jflat", b)

from_conformance()
hand_written()
jflat_seeds()
b64url_seeds()
jwt_seeds()
world_seeds()
template_seeds()
for t in sorted(os.listdir(OUT)):
    print(t, len(os.listdir(os.path.join(OUT, t))))
