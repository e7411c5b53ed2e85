# Draupnir's build, run and test entry points. Everything needs root: btrfs,
# loop devices and running postgres as the postgres user.
GO        ?= go
VERSION   ?=
LDFLAGS   := $(if $(VERSION),-X github.com/draupnir-db/draupnir.Version=$(VERSION))
DEV_DIR   ?= .dev
# Fuzz targets run briefly in `make test` (a count of inputs each; see
# scripts/fuzz.sh); longer by hand: make fuzz FUZZTIME=10m
FUZZTIME  ?= 20000x

.PHONY: build run test unit fuzz bench loadtest migrate clean deb

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/draupnir ./cmd/draupnir
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/draupnir-client ./cmd/draupnir-client

# Build, loop-mount a btrfs data path if needed, write a dev config and serve
# with the embedded state cluster and a demo image. DATA_PATH (from the
# environment or make's command line) reaches the script only when given:
# it then overrides the config that the first run wrote.
run: build
	DEV_DIR=$(DEV_DIR) ./scripts/dev-run.sh

# Unit and integration tests (real btrfs, postgres and OpenSSH), then each
# fuzz target briefly.
test: build
	@test "$$(id -u)" = 0 || { echo "make test needs root (loop btrfs, postgres as its own user); as a normal user, go test ./... runs the unit tests and skips the rest" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# The load test at full size (go test runs it short: 10 clients for 10s).
LOAD_DURATION ?= 60s
LOAD_CLIENTS  ?= 50
loadtest:
	$(GO) test -count=1 -timeout 30m -v -run '^TestLoad$$' ./e2e/ -load.duration=$(LOAD_DURATION) -load.clients=$(LOAD_CLIENTS)

bench: build
	$(GO) run ./cmd/draupnir-bench

migrate: build
	./bin/draupnir migrate

clean:
	rm -rf bin

# The Debian package (bin/ binaries, systemd unit, example config, docs) into
# build/, written by dpkg-deb; VERSION sets both the binaries' and the
# package's version.
deb: build
	$(GO) run ./cmd/draupnir-deb -out build $(if $(VERSION),-version $(VERSION))
