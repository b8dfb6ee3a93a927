#!/usr/bin/env bash
# Regenerates the ClientHello captures next to this script (see README.md for the table).
#
# A plain TCP listener on 127.0.0.1 (free port, loopback only) saves the first TLS record(s) of
# each connection and closes; each client of the table is pointed at it in turn, with a timeout.
# Every capture is checked (one record holding just the hello; SNI and ALPN as in the table)
# in a temp dir, and the committed files are replaced only when all of them passed.
# Needs curl, openssl, python3, node, wget (GnuTLS) and coreutils' timeout; no network beyond lo.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
helper="$here/regenerate.py"
CLIENT_TIMEOUT=10 # seconds per client (each also has its own 5 s connect/read timeout)

# name | SNI sent, as raw bytes ("-": none) | ALPN offered ("-": none) | supported_versions check
# Keep in sync with README.md and `fixtures()` in gateway-proto/src/hello.rs.
FIXTURES=(
	"curl-h1-sni                    api.example.com   http/1.1      -"
	"curl-h2-sni                    api.example.com   h2,http/1.1   -"
	"curl-no-sni-ip                 -                 h2,http/1.1   -"
	"openssl-tls12                  api.example.com   -             tls12"
	"openssl-tls13                  api.example.com   -             tls13"
	"openssl-upper-trailing-dot     API.Example.COM.  -             -"
	"python-urllib-sni              api.example.com   -             -"
	"node-https-sni                 api.example.com   h2,http/1.1   -"
	"wget-gnutls-sni                localhost         -             -"
)

# Runs the client for fixture $1 against 127.0.0.1:$2, exactly as the README's table says.
client() {
	local name=$1 port=$2
	local curl=(curl -q --silent --show-error --max-time 5 --noproxy '*' --output /dev/null)
	local resolve=(--resolve "api.example.com:$port:127.0.0.1" "https://api.example.com:$port/")
	local s_client=(openssl s_client -connect "127.0.0.1:$port")
	case $name in
	curl-h1-sni) "${curl[@]}" --http1.1 "${resolve[@]}" ;;
	curl-h2-sni) "${curl[@]}" --http2 "${resolve[@]}" ;;
	curl-no-sni-ip) "${curl[@]}" "https://127.0.0.1:$port/" ;;
	openssl-tls12) "${s_client[@]}" -servername api.example.com -tls1_2 </dev/null ;;
	openssl-tls13) "${s_client[@]}" -servername api.example.com -tls1_3 </dev/null ;;
	openssl-upper-trailing-dot) "${s_client[@]}" -servername API.Example.COM. </dev/null ;;
	python-urllib-sni)
		# Python's ssl as urllib uses it, minus urllib's ALPN "http/1.1" (the capture has none).
		python3 -I - "$port" <<-'EOF'
			import socket, ssl, sys
			ctx = ssl.create_default_context()
			with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
			    ctx.wrap_socket(s, server_hostname="api.example.com")
		EOF
		;;
	node-https-sni)
		PORT=$port node -e '
			const s = require("tls").connect({
				host: "127.0.0.1", port: Number(process.env.PORT),
				servername: "api.example.com", ALPNProtocols: ["h2", "http/1.1"],
			});
			s.setTimeout(5000, () => process.exit(1));
			s.on("error", (e) => { console.error(e.message); process.exit(1); });
			s.on("close", () => process.exit(1));
		'
		;;
	# -4: only 127.0.0.1 is listened on; the URL (and so the SNI) stays "localhost".
	wget-gnutls-sni) wget --no-config -4 --no-proxy --tries=1 --timeout=5 -O /dev/null "https://localhost:$port/" ;;
	*)
		echo "no client for $name" >&2
		return 2
		;;
	esac
}

missing=()
for tool in curl openssl python3 node wget timeout; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
	echo "regenerate.sh: missing tool(s): ${missing[*]} (install them; nothing was regenerated)" >&2
	exit 1
fi
if ! wget --version | grep -q '+ssl/gnutls'; then
	echo "regenerate.sh: wget is not built with GnuTLS (wget-gnutls-sni needs it)" >&2
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/client-hello.XXXXXX")
listener_pid=
cleanup() {
	if [[ -n $listener_pid ]] && kill -0 "$listener_pid" 2>/dev/null; then
		kill "$listener_pid" 2>/dev/null || true
		wait "$listener_pid" 2>/dev/null || true
	fi
	rm -rf -- "$tmp"
	rm -f -- "$here"/.*.bin.new
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir "$tmp/raw" "$tmp/out"
echo "clients: $(curl --version | head -1 | cut -d' ' -f1-5)"
echo "         $(openssl version); Python $(python3 -I -c 'import ssl, sys; print(sys.version.split()[0], "/", ssl.OPENSSL_VERSION)')"
echo "         Node.js $(node --version); $(wget --version | head -1)"

# The listener ends by itself after every client could have had its full timeout.
lifetime=$((${#FIXTURES[@]} * (CLIENT_TIMEOUT + 3) + 10))
python3 -I "$helper" listen "$tmp/raw" "$tmp/port" "$lifetime" 2>"$tmp/listener.log" &
listener_pid=$!
for _ in $(seq 50); do
	[[ -s $tmp/port ]] && break
	kill -0 "$listener_pid" 2>/dev/null || break
	sleep 0.1
done
if [[ ! -s $tmp/port ]]; then
	echo "regenerate.sh: the listener did not start:" >&2
	cat "$tmp/listener.log" >&2
	exit 1
fi
port=$(<"$tmp/port")
echo "listening on 127.0.0.1:$port"

shopt -s nullglob
failed=()
for row in "${FIXTURES[@]}"; do
	read -r name sni alpn versions <<<"$row"
	rc=0
	timeout -k 2 "$CLIENT_TIMEOUT" bash -c "$(declare -f client); client $name $port" \
		>"$tmp/$name.log" 2>&1 </dev/null || rc=$?
	# The client is expected to fail (the listener closes after the hello); 124/137 is a timeout.
	caps=("$tmp"/raw/conn-*)
	why=
	if ((${#caps[@]} == 0)); then
		why="no connection captured (client exit $rc)"
	elif ((${#caps[@]} > 1)); then
		why="${#caps[@]} connections, expected one"
	elif [[ ${caps[0]} == *.failed ]]; then
		why="connection closed before a complete record"
	else
		mv -- "${caps[0]}" "$tmp/out/$name.bin"
		args=("$tmp/out/$name.bin" "$sni" "$alpn")
		[[ $versions == - ]] || args+=("$versions")
		python3 -I "$helper" check "${args[@]}" 2>"$tmp/$name.check" || why=$(<"$tmp/$name.check")
	fi
	rm -f -- "${caps[@]}"
	if [[ -n $why ]]; then
		echo "FAILED $name: $why" >&2
		sed 's/^/    | /' "$tmp/$name.log" >&2
		failed+=("$name")
	fi
	if ! kill -0 "$listener_pid" 2>/dev/null; then
		echo "regenerate.sh: the listener exited:" >&2
		cat "$tmp/listener.log" >&2
		exit 1
	fi
done

if ((${#failed[@]})); then
	echo "regenerate.sh: failed client(s): ${failed[*]}; the committed captures are unchanged" >&2
	exit 1
fi

# All captured and checked: stage next to the targets, then rename each into place.
for row in "${FIXTURES[@]}"; do
	read -r name _ <<<"$row"
	cp -- "$tmp/out/$name.bin" "$here/.$name.bin.new"
	chmod 0644 "$here/.$name.bin.new"
done
for row in "${FIXTURES[@]}"; do
	read -r name _ <<<"$row"
	mv -f -- "$here/.$name.bin.new" "$here/$name.bin"
done
echo "replaced ${#FIXTURES[@]} captures in $here; now run: cargo test -p gateway-proto"
