# offloadd — the two commands a newcomer needs: `make test` and `make demo`.
# Everything installs itself (apt packages, venv, Debian kernels) on first use;
# run as root on Debian 12.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
KERNELS := 6.1 6.12 7
KERNEL ?= 6.1
SUITE ?= bookworm
# The integration runs of `make test` (LAB_RUNS below): Debian 12 (this
# machine's own root) on its kernels, Debian 13 (a root from lab/roots.sh) on
# the 7.x kernel of its backports.
# Debian testing (forky: nftables 1.1.7, Python 3.14) on 7.x: the kernel
# wildcard mode and what it rests on (a stated subset: the whole suite runs
# above). Testing, not unstable: its packages always install together, so its
# debootstrap does not break in the middle of a transition.
TESTING_TESTS := tests/integration/test_attach.py tests/integration/test_capability.py
# The full-system test (systemd as PID 1, system-SUITE-KERNEL below): Debian
# 12 on its own kernel, Debian 13 on the 7.x kernel of its backports.
# Every lab VM of make test, as lab/lab-runs.sh names them, longest first: it
# runs two at a time (OFFLOADD_VM_JOBS). 7.x with Debian 13 runs everything,
# in two VMs (+kernel: the kernel-facing tests; +logic: those marked
# daemon_logic, offloadd's own coalescing, reload and CLI logic), so that no
# VM is the long pole: one VM of all of it took 52+ min on a slow day, near
# vm-test.sh's timeout. 6.12 and 6.1 share the kernel-facing tests out (below;
# vm-test.sh leaves out one_kernel there too).
comma := ,
empty :=
space := $(empty) $(empty)
# 6.1 and 6.12 gave the same result in every kernel-facing test (runs up to
# 2026-12-02), so they share those tests out. Both run the capability probe,
# the dataplane, offloadd's TCP/UDP offload, stacked devices and offloadd on
# the gateway lab (test_stack.py, test_gateway.py: every path of a real
# gateway on every kernel, ~145 s each) and repair (test_repair.py, 45 s: the
# kernel's own answer, and a refused repair step healed, issue 22); 6.12 alone
# re-validation (NOT_ON_61; but the change watcher's restart runs on all); 6.1
# alone the firewalls-beside test (6.1 refuses the kernel's hook list: its
# fallback is tested there, 7.x lists it), device following, survival,
# metrics, attach and hardware (NOT_ON_612: the same nftables 1.0.6 as 6.12;
# 7.x has 1.1.3). The gate's key, size and cost (test_gate, test_gate_scale)
# run on every kernel (issue 23). 7.x runs all of them. The gateway
# lab's facts (FACTS: plain nft, no offloadd; a record
# of what a kernel's flowtable does, the same on 6.1 and 6.12 in every run)
# are not part of make test: run them when a lab kernel changes, with
# lab/vm-test.sh 7 --userspace trixie tests/integration/test_gateway_facts.py.
FACTS := tests/integration/test_gateway_facts.py
NOT_ON_61 := tests/integration/test_gateway_facts.py \
	$(addprefix tests/integration/test_revalidate.py::,\
	  test_new_rules_and_set_elements_reach_offloaded_flows \
	  test_bursts_are_coalesced_and_own_changes_do_not_count \
	  test_a_rule_for_one_direction_is_not_skipped_when_the_other_keeps_flowing)
NOT_ON_612 := tests/integration/test_gateway_facts.py tests/integration/test_beside.py \
	tests/integration/test_survival.py tests/integration/test_metrics.py \
	tests/integration/test_attach.py tests/integration/test_hardware.py \
	$(addprefix tests/integration/test_daemon.py::,\
	  test_devices_follow_create_delete_rename_and_netns_move \
	  test_a_removed_member_costs_one_transaction_and_nothing_after \
	  test_vlan_and_bridge_devices test_admin_drop_still_drops_and_other_tables_untouched \
	  test_more_devices_than_one_kernel_message_holds \
	  test_backend_dry_run_is_checked_by_the_kernel_and_applies_nothing)
deselect = $(subst $(space),$(comma),$(addprefix --deselect=,$(1)))
# 7.x's kernel-facing tests in two VMs (+kernel: all but these; +paths:
# these): in one VM they took 60+ min on the 2026-12-03 slow-day rehearsal,
# past vm-test.sh's per-boot timeout, and were the long pole.
PATHS_7 := tests/integration/test_gateway.py tests/integration/test_offloadctl.py \
	tests/integration/test_repair.py tests/integration/test_revalidate.py \
	tests/integration/test_stack.py tests/integration/test_survival.py
LAB_RUNS := 7-trixie+kernel:--kernel-facing-only,$(call deselect,$(PATHS_7) $(FACTS)) \
	7-trixie+paths:--kernel-facing-only,$(subst $(space),$(comma),$(PATHS_7)) \
	7-trixie+logic:--daemon-logic-only \
	6.12:--kernel-facing-only,$(call deselect,$(NOT_ON_612)) \
	6.1:--kernel-facing-only,$(call deselect,$(NOT_ON_61)) \
	system-trixie-7 \
	system-bookworm-6.1 \
	7-forky:$(subst $(space),$(comma),$(TESTING_TESTS)) \
	demo
# Their result directories (build/results/), for make test's summary (the
# demo leaves none: it passes or fails as a whole).
LAB_RESULTS := $(subst +,-,$(foreach r,$(filter-out demo,$(LAB_RUNS)),$(firstword $(subst :, ,$(r)))))

.PHONY: deb install demo bench test-native test test-slow test-lab setup test-unit test-host lint test-vm test-vms lab-shell vagrant-validate clean test-system test-systems generate install-docs test-alerts

## make test: everything CI runs — setup, lint, unit tests, host checks, the
## alert rules' tests, the Vagrantfile check, the integration suite in the VM
## on every kernel, the full-system test (systemd as PID 1) on the default
## kernel, and the demo (it fails unless flows are offloaded), so the
## newcomer's command stays working.
## Every step runs even after one fails; the log ends with each failed step and
## test (lab/test-all.sh), and each step's output is kept in build/logs/.
TEST_STEPS := lint test-unit test-host test-alerts vagrant-validate test-lab
test: setup
	@lab/test-all.sh "$(LAB_RESULTS)" $(TEST_STEPS)

## make test-slow: make test as a slow day runs it, to rehearse one: a busy
## loop per core (nice 0, as busy as the VMs) beside the whole of make test.
test-slow: setup
	@lab/slow-day.sh make --no-print-directory test

## make test-lab: every lab VM of make test (the integration runs, the
## full-system tests and the demo), two at a time (lab/lab-runs.sh).
test-lab: setup
	@lab/lab-runs.sh $(LAB_RUNS)

setup:
	@lab/setup.sh

lint: setup
	$(VENV)/bin/ruff check offloadd tests lab bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-unit: setup
	$(PY) -m pytest tests/unit -q

## make generate: rewrite the files made from the code (bash completion and man
## pages, from the argument parsers and the config schema); commit them: the
## unit tests fail when they are stale.
generate: setup
	$(PY) -m offloadd.cli.completion contrib/bash-completion
	$(PY) -m offloadd.cli.manpages man

## make test-alerts: the Prometheus alert rules, checked and unit-tested by promtool
## (Debian package prometheus, installed by setup).
test-alerts: setup
	promtool check rules contrib/prometheus/offloadd.rules.yml
	promtool test rules contrib/prometheus/offloadd.rules.test.yml

# Needs root on the real machine: the capability probe against the host kernel.
test-host: setup
	$(PY) -m pytest tests/host -q

## make test-vm KERNEL=6.1|6.12|7 [PYTEST_ARGS=...]: integration suite in one VM.
test-vm: setup
	lab/vm-test.sh $(KERNEL) $(PYTEST_ARGS)

test-vms: setup
	@lab/lab-runs.sh $(filter-out system-% demo,$(LAB_RUNS))

## make test-system [KERNEL=6.1|6.12|7] [SUITE=bookworm|trixie]: offloadd under
## systemd as PID 1 in a VM (a Debian 12 or 13 root, debootstrapped and cached
## in ~/.cache/offloadd-lab/roots by lab/roots.sh; the Debian package
## of this checkout installed with apt inside): install (disabled), upgrade from
## a ~test1 build keeping an edited config, READY, reload, refused reload,
## watchdog restart, hardening, offloaded traffic, purge. Needs debootstrap and
## the packaging tools (apt; setup installs them).
test-system: setup
	lab/system-test.sh $(KERNEL) $(SUITE)

## make test-systems: the full-system tests of make test (system-* in LAB_RUNS).
test-systems: setup
	@lab/lab-runs.sh $(filter system-%,$(LAB_RUNS))

## make demo: the lab VM with offloadd in a router namespace, traffic, a
## hot-plugged VLAN, then offloadctl status, conntrack and metrics.
demo: setup
	lab/vm-run.sh $(KERNEL) "$(CURDIR)/.venv/bin/python" lab/demo.py

## make bench [KERNEL=6.1|6.12|7] [USERSPACE=trixie|forky|sid] [CASES=...]: benchmarks
## in the lab VM -> bench/results/<KERNEL>[-<USERSPACE>].json. The kernel
## wildcard attach: make bench KERNEL=7 USERSPACE=forky CASES=first_offload; a million
## offloaded flows (~35 min, an 8-GiB guest): make bench KERNEL=7 USERSPACE=trixie CASES=scale
bench:
	@lab/setup.sh --bench
	lab/vm-bench.sh $(KERNEL) $(if $(USERSPACE),--userspace $(USERSPACE)) $(CASES)

## make test-native: the integration suite on this machine's own kernel (a
## Vagrant box, a gateway with flowtables); fails if the kernel cannot.
test-native: setup
	lab/native-test.sh $(PYTEST_ARGS)

vagrant-validate: setup
	cd $(CURDIR) && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

## make deb: the Debian package, build/offloadd_<version>_all.deb (debhelper,
## dpkg-buildpackage -us -uc -b in a copy under build/deb/; the version is
## pyproject's), then lintian on it (fails on any error or warning). Needs
## debhelper, dh-python, python3-pip, python3-setuptools, python3-wheel and
## lintian (lab/setup.sh installs them); fetches the wheels pinned in
## debian/vendor.txt from PyPI once. Not part of setup: a gateway can build it.
## Install it with: apt install ./build/offloadd_*.deb
deb:
	lab/build-deb.sh --lintian

## make install [PREFIX=/opt/offloadd]: offloadd in a venv (system Python, so
## python3-nftables is seen), the unit pointed at it, the example config (kept
## if one exists), modules-load.d and sysctl.d files, man pages and bash
## completion (install-docs). Then:
##   systemctl daemon-reload && systemctl enable --now offloadd
PREFIX ?= /opt/offloadd
# Beside the /usr/local/sbin links: man and bash-completion look there.
DOCPREFIX ?= /usr/local/share
install: install-docs
	/usr/bin/python3 -m venv --system-site-packages $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q --disable-pip-version-check .
	install -d $(DESTDIR)/etc/systemd/system $(DESTDIR)/usr/local/sbin
	sed 's|^ExecStart=/usr/sbin/offloadd|ExecStart=$(PREFIX)/bin/offloadd|' systemd/offloadd.service \
		> $(DESTDIR)/etc/systemd/system/offloadd.service
	install -Dm644 systemd/offloadd-modules.conf $(DESTDIR)/etc/modules-load.d/offloadd.conf
	install -Dm644 systemd/offloadd-sysctl.conf $(DESTDIR)/etc/sysctl.d/60-offloadd.conf
	test -e $(DESTDIR)/etc/offloadd/offloadd.toml || \
		install -Dm644 etc/offloadd/offloadd.toml $(DESTDIR)/etc/offloadd/offloadd.toml
	ln -sf $(PREFIX)/bin/offloadd $(PREFIX)/bin/offloadctl $(DESTDIR)/usr/local/sbin/
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now offloadd"

install-docs:
	install -Dm644 man/offloadd.8 $(DESTDIR)$(DOCPREFIX)/man/man8/offloadd.8
	install -Dm644 man/offloadctl.8 $(DESTDIR)$(DOCPREFIX)/man/man8/offloadctl.8
	install -Dm644 man/offloadd.toml.5 $(DESTDIR)$(DOCPREFIX)/man/man5/offloadd.toml.5
	install -Dm644 contrib/bash-completion/offloadctl \
		$(DESTDIR)$(DOCPREFIX)/bash-completion/completions/offloadctl
	install -Dm644 contrib/bash-completion/offloadd \
		$(DESTDIR)$(DOCPREFIX)/bash-completion/completions/offloadd

clean:
	rm -rf build dist *.egg-info
