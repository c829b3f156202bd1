# Multi-stage image: build with the Rust toolchain, run on a slim Debian with
# the kernel tools the proxy drives (iptables, nftables, ipset, conntrack,
# iproute2). /usr/local/bin/kube-proxy is the path kubeadm's DaemonSet runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin kube-proxy-rs

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipset conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kube-proxy-rs /usr/local/bin/kube-proxy-rs
RUN ln -s kube-proxy-rs /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy-rs"]
