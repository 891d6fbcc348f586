#!/bin/sh
# A throwaway test CA, a server certificate, per-device client certificates and a CRL for the
# mTLS listener (issue 7). TEST ONLY: keys are unencrypted; a production CA lives offline or in an
# HSM.
#
#   make_test_ca.sh OUT_DIR [SERVER_NAME] [DEVICE_ID ...]   create (or extend) the test CA
#   make_test_ca.sh --revoke OUT_DIR DEVICE_ID ...          revoke certificates, rewrite crl.pem
#
# OUT_DIR gets ca.crt/ca.key, crl.pem, server.crt/server.key (CN and subjectAltName =
# SERVER_NAME, default localhost, plus IP 127.0.0.1) and, per device, DEVICE_ID.crt/DEVICE_ID.key
# with CN = DEVICE_ID: Mosquitto's use_identity_as_username makes the CN the MQTT username, so
# the certificate's CN is what the ACL is matched against. Existing files are reused, so devices
# can be added later with the same CA. After --revoke, SIGHUP mosquitto: it re-reads crlfile.
set -eu

revoke=0
if [ "${1:-}" = "--revoke" ]; then
    revoke=1
    shift
fi
out=${1:?usage: make_test_ca.sh [--revoke] OUT_DIR [SERVER_NAME] [DEVICE_ID ...]}
shift
if [ "$revoke" -eq 0 ]; then
    server=${1:-localhost}
    [ $# -ge 1 ] && shift
fi
days=30
mkdir -p "$out"
umask 077

# A minimal `openssl ca` configuration: only its database is used, to revoke and to write the CRL.
cnf="$out/ca.cnf"
if [ ! -f "$cnf" ]; then
    cat > "$cnf" <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
database = $out/index.txt
crlnumber = $out/crlnumber
certificate = $out/ca.crt
private_key = $out/ca.key
default_md = sha256
default_crl_days = $days
CNF
    : > "$out/index.txt"
    echo 01 > "$out/crlnumber"
fi

gencrl() {
    openssl ca -config "$cnf" -gencrl -out "$out/crl.pem" 2>/dev/null
    chmod 0644 "$out/crl.pem"
}

check_id() {
    # The same rule as provisioning: a CN with '+', '#', '/' or '%' could become a wildcard.
    case "$1" in
        *[!A-Za-z0-9_-]* | [-_]* | "") echo "refused device id: $1" >&2; exit 2 ;;
    esac
    if [ "${#1}" -gt 64 ]; then echo "refused device id (over 64 characters): $1" >&2; exit 2; fi
}

if [ "$revoke" -eq 1 ]; then
    for device in "$@"; do
        check_id "$device"
        openssl ca -config "$cnf" -revoke "$out/$device.crt" 2>/dev/null
    done
    gencrl
    echo "revoked $# certificate(s); $out/crl.pem rewritten: SIGHUP mosquitto to apply"
    exit 0
fi

for device in "$@"; do check_id "$device"; done

if [ ! -f "$out/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -subj "/O=streetlight test/CN=streetlight test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
fi
[ -f "$out/crl.pem" ] || gencrl

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
    sign "$device" "$device" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
# Public parts readable so the broker (its own user) can load them. The server key is 0640: the
# broker reads it through its group once the directory is `chgrp -R mosquitto` (docs/security.md);
# the CA key and the device keys stay 0600 (the broker never reads them).
chmod 0644 "$out"/*.crt
chmod 0640 "$out/server.key"
echo "test CA in $out: ca.crt, crl.pem, server.crt/key for $server, $# client certificate(s)"
