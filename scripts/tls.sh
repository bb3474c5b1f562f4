#!/usr/bin/env bash
# A throw-away certificate authority for the local brokers' TLS listeners.
#
#   scripts/tls.sh DIR    write, once, into DIR (mode 0700):
#     ca.pem, ca.key            a CA valid for 30 days
#     server.pem, server.key    a server certificate for 127.0.0.1 and localhost
#     server-bundle.pem         server.key then server.pem (a PEM key store)
#     client.pem, client.key    a client certificate, CN=fleet (mutual TLS)
#     other-ca.pem              a second CA that signed nothing here: a client
#                               that trusts only it must refuse the server
#   and print DIR. Files that exist are kept; delete DIR to start over.
#
# Keys are unencrypted PKCS#8 (what Kafka's PEM key store and Python's ssl
# module read); nothing here is meant for anything but loopback tests.
set -euo pipefail

DIR="${1:?usage: scripts/tls.sh DIR}"
DAYS=30

command -v openssl >/dev/null || {
    echo "tls.sh: openssl not found" >&2
    exit 1
}
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"

key() { # file
    [[ -s "$1" ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

ca() { # name subject
    key "$1.key"
    [[ -s "$1.pem" ]] || openssl req -x509 -new -key "$1.key" -sha256 -days "$DAYS" \
        -subj "$2" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem" 2>/dev/null
}

leaf() { # name subject extensions
    [[ -s "$1.pem" ]] && return
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

ca ca "/CN=fleet test CA"
ca other-ca "/CN=fleet untrusted CA"
leaf server "/CN=localhost" "$(printf '%s\n' \
    "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "extendedKeyUsage=serverAuth" "basicConstraints=CA:FALSE")"
leaf client "/CN=fleet" "$(printf '%s\n' \
    "extendedKeyUsage=clientAuth" "basicConstraints=CA:FALSE")"
cat server.key server.pem >server-bundle.pem
chmod 600 ./*.key server-bundle.pem
printf '%s\n' "$DIR"
