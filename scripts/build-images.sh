#!/usr/bin/env bash
# build-images.sh [--no-load] [name...]: builds spawner's images without Docker and loads them
# into the running cluster.
#
# Each image is one static binary (CGO_ENABLED=0 go build -trimpath) packed by scripts/imagebuilder
# into _output/images/<name>.tar (docker-archive, FROM-scratch-like, user 65532), tagged
# localhost/<name>:dev. Loaded with `ctr -n k8s.io images import` (local cluster) or
# `kind load image-archive` (kind). An image whose inputs did not change is not rebuilt.
#
# Names (default: every component present, plus spawner-pause):
#   spawner-controller (controller/)  spawner-sidecar (sidecar/)  spawner-sweeper (sweeper/)
#   spawner-api (api-server/)  spawner-demo (e2e/demo/)  spawner-pause, spawner-hello (scripts/images/)
#   spawner-demo-root: the demo as uid 0 (USER 0:0), for the test that a root image without a
#   security context runs under the controller's restricted defaults (api-server/test)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

load=1
names=()
for a in "$@"; do
	case "$a" in
	--no-load) load=0 ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
	-*) die "unknown option $a" ;;
	*) names+=("$a") ;;
	esac
done

# name -> source package directory (relative to the repository root) and module dir for GOWORK
declare -A SRC=(
	[spawner-controller]=controller [spawner-sidecar]=sidecar [spawner-sweeper]=sweeper
	[spawner-api]=api-server [spawner-demo]=e2e/demo [spawner-demo-root]=e2e/demo
	[spawner-pause]=scripts/images/pause [spawner-hello]=scripts/images/hello
)
# name -> the uid (and gid) its image runs as, when not imagebuilder's 65532
declare -A UID_OF=([spawner-demo-root]=0)
COMPONENT_ORDER=(spawner-controller spawner-sidecar spawner-sweeper spawner-api spawner-demo spawner-demo-root)

if [ ${#names[@]} = 0 ]; then
	for n in "${COMPONENT_ORDER[@]}"; do
		if [ -f "$SPAWNER_ROOT/${SRC[$n]}/main.go" ]; then names+=("$n"); else echo "==> note: ${SRC[$n]}/main.go does not exist yet; skipping $n"; fi
	done
	names+=(spawner-pause)
fi

go_ok
OUT=$SPAWNER_ROOT/_output
mkdir -p "$OUT/bin" "$OUT/images" "$OUT/logs"

# imagebuilder itself
IB=$OUT/bin/imagebuilder
ib_hash=$(cat "$SPAWNER_ROOT"/scripts/imagebuilder/*.go "$SPAWNER_ROOT/scripts/imagebuilder/go.mod" | sha256sum | cut -c1-16)
if [ ! -x "$IB" ] || [ "$(cat "$IB.inputs" 2>/dev/null)" != "$ib_hash" ]; then
	(cd "$SPAWNER_ROOT/scripts/imagebuilder" && GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$IB" .) ||
		die "building scripts/imagebuilder failed"
	echo "$ib_hash" >"$IB.inputs"
fi

# inputs_hash <name>: hash of every Go source and module file the binary may depend on.
inputs_hash() {
	local dirs
	case "$1" in
	spawner-pause | spawner-hello) dirs=(scripts/images) ;;
	*) dirs=(go.work go.work.sum api-server apis common controller e2e generated sidecar sweeper) ;;
	esac
	(cd "$SPAWNER_ROOT" && find "${dirs[@]}" -type f \( -name '*.go' -o -name go.mod -o -name go.sum -o -name go.work -o -name go.work.sum \) \
		-not -name '*_test.go' 2>/dev/null | sort | xargs -r sha256sum; go env GOVERSION) | sha256sum | cut -c1-16
}

built=()
for n in "${names[@]}"; do
	src=${SRC[$n]:-}
	[ -n "$src" ] || die "unknown image '$n' (known: ${!SRC[*]})"
	[ -f "$SPAWNER_ROOT/$src/main.go" ] || die "$src/main.go does not exist; cannot build $n"
	tar=$OUT/images/$n.tar
	h=$(inputs_hash "$n")-uid${UID_OF[$n]:-65532}
	if [ -f "$tar" ] && [ "$(cat "$tar.inputs" 2>/dev/null)" = "$h" ]; then
		echo "==> $n: inputs unchanged, reusing $tar"
		built+=("$n")
		continue
	fi
	blog=$OUT/logs/build-$n.log
	case "$src" in
	scripts/images/*) (cd "$SPAWNER_ROOT/scripts/images" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/$n" "./${src#scripts/images/}") >"$blog" 2>&1 ;;
	*) (cd "$SPAWNER_ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/$n" "./$src") >"$blog" 2>&1 ;;
	esac || { tail -n 20 "$blog" >&2; die "go build of $n (./$src) failed; log: $blog"; }
	rev=$(git -C "$SPAWNER_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	"$IB" -binary "$OUT/bin/$n" -name "$n" -tag "localhost/$n:dev" -out "$tar" -uid "${UID_OF[$n]:-65532}" \
		-label "org.opencontainers.image.title=$n" \
		-label "org.opencontainers.image.source=https://spawner.dev" \
		-label "org.opencontainers.image.revision=$rev" \
		-label "org.opencontainers.image.version=dev" >/dev/null || die "imagebuilder failed for $n"
	echo "$h" >"$tar.inputs"
	echo "==> built $tar (localhost/$n:dev, $(du -h "$tar" | cut -f1))"
	built+=("$n")
done

[ $load = 1 ] || exit 0

mode=$(cluster_mode)
case "$mode" in
kind)
	command -v kind >/dev/null 2>&1 || die "kind is not installed but the cluster mode is kind"
	for n in "${built[@]}"; do
		kind load image-archive "$OUT/images/$n.tar" --name "$SPAWNER_KIND_NAME" >/dev/null || die "kind load image-archive $OUT/images/$n.tar failed"
		echo "==> loaded localhost/$n:dev into kind cluster $SPAWNER_KIND_NAME"
	done
	;;
local)
	ctr_ --connect-timeout 1s version >/dev/null 2>&1 ||
		die "the local cluster's containerd ($SOCK) is not running; start the cluster with scripts/cluster-up.sh (or use --no-load)"
	for n in "${built[@]}"; do
		ctr_ -n k8s.io images import "$OUT/images/$n.tar" >/dev/null || die "ctr images import $OUT/images/$n.tar failed; containerd log: $LOGS/containerd.log"
		echo "==> loaded localhost/$n:dev into the local cluster's containerd"
	done
	;;
esac
