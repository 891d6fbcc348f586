#!/bin/sh
# A throwaway test CA, a server certificate and per-device client certificates for the mTLS
# listener (issue 7). TEST ONLY: keys are unencrypted; a production CA lives offline or in an HSM.
#
#   make_test_ca.sh OUT_DIR [SERVER_NAME] [DEVICE_ID ...]
#
# OUT_DIR gets ca.crt/ca.key, server.crt/server.key (CN and subjectAltName = SERVER_NAME,
# default localhost, plus IP 127.0.0.1) and, per device, DEVICE_ID.crt/DEVICE_ID.key with
# CN = DEVICE_ID: Mosquitto's use_identity_as_username makes the CN the MQTT username, so the
# certificate's CN is what the ACL is matched against. Existing CA files are reused, so devices
# can be added later with the same CA.
set -eu

out=${1:?usage: make_test_ca.sh OUT_DIR [SERVER_NAME] [DEVICE_ID ...]}
server=${2:-localhost}
[ $# -ge 2 ] && shift 2 || shift $#
days=30
mkdir -p "$out"
umask 077

if [ ! -f "$out/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -subj "/O=streetlight test/CN=streetlight test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
fi

sign() { # name cn extensions
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/O=streetlight test/CN=$2" \
        -keyout "$out/$1.key" -out "$out/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$out/$1.ext"
    openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$out/$1.ext" -out "$out/$1.crt" 2>/dev/null
    rm -f "$out/$1.csr" "$out/$1.ext"
}

if [ ! -f "$out/server.crt" ]; then
    sign server "$server" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$server,IP:127.0.0.1"
fi

for device in "$@"; do
    # The same rule as provisioning: a CN with '+', '#', '/' or '%' could become a wildcard.
    case "$device" in
        *[!A-Za-z0-9_-]* | [-_]* | "") echo "refused device id: $device" >&2; exit 2 ;;
    esac
    sign "$device" "$device" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
# Public parts readable so the broker (its own user) can load them; keys stay 0600.
chmod 0644 "$out"/*.crt
echo "test CA in $out: ca.crt, server.crt/key for $server, $# client certificate(s)"
