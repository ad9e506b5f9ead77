# Privileged profiling in a container: build with the eBPF toolchain, run the one binary.
#
#   docker build -t profiler .
#   docker run --rm --privileged --pid=host \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/kernel/btf:/sys/kernel/btf:ro \
#     -v "$PWD/results:/results" profiler attach --pid 4242 --duration 30s -o /results/run
#
# The always-on agent is a stage of its own (`docker build --target agent -t profiler-agent .`):
#   docker run -d --privileged --pid=host -p 127.0.0.1:9464:9464 \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/kernel/btf:/sys/kernel/btf:ro \
#     profiler-agent --listen 0.0.0.0:9464 --allow-remote --comm testbed-pool --all
# Arguments replace the default CMD, so the listen address is always stated: 0.0.0.0 inside the
# container (--allow-remote) is what a published port reaches; publish it to loopback or a
# trusted network only (README: what the endpoint reveals).
#
# The release checklist is in the same binary: `profiler checklist RELEASE --pid PID --url URL
# --results-dir /results` (add --network=host for a URL on the host's loopback). With --start
# the server must be in the image: build one FROM this with it added.

FROM rust:1.95-bookworm AS build
# The eBPF programs build with a nightly and bpf-linker linked against that nightly's LLVM;
# this is the nightly the project is developed and tested with.
ENV PROFILER_EBPF_TOOLCHAIN=nightly-2026-05-20
RUN rustup toolchain install "$PROFILER_EBPF_TOOLCHAIN" --profile minimal --component rust-src \
 && LLVM="$(ls "$(rustc +"$PROFILER_EBPF_TOOLCHAIN" --print sysroot)"/lib/libLLVM.so.*-rust-*)" \
 && MAJOR="$(basename "$LLVM" | sed -E 's/libLLVM\.so\.([0-9]+)\..*/\1/')" \
 && mkdir -p /opt/llvm/lib \
 && ln -s "$LLVM" /opt/llvm/lib/libLLVM.so && ln -s "$LLVM" "/opt/llvm/lib/$(basename "$LLVM")" \
 && LLVM_PREFIX=/opt/llvm cargo install bpf-linker --version 0.13.0 \
      --no-default-features --features "llvm-$MAJOR"
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package profiler

FROM debian:bookworm-slim AS runtime
COPY --from=build /src/target/release/profiler /usr/local/bin/profiler
WORKDIR /results
ENTRYPOINT ["/usr/local/bin/profiler"]

FROM runtime AS agent
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/profiler", "agent"]
# Listening beyond loopback stays an explicit choice: a CMD of your own must say it again.
CMD ["--listen", "0.0.0.0:9464", "--allow-remote", "--all", "--comm", "testbed-pool"]

# The default image: the whole CLI.
FROM runtime
