# hwtests: the two commands a fresh machine needs (see README.md).
#   make lab-report   set up, build the QEMU lab, compare two real kernel builds, write the HTML report
#   make test         set up and run the project's own tests (lab tiers included; needs root)

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
HWT     = $(VENV)/bin/hwtests

# Debian packages: lab hosts (sshd, iperf3, ethtool, ping), builds (gcc, make, libelf for
# kernel modules), the VM lab (qemu, busybox, cpio), PostgreSQL and Chromium for the tests.
APT_PACKAGES = openssh-server openssh-client iperf3 ethtool iproute2 iputils-ping procps \
	util-linux kmod xz-utils gcc make libc6-dev libelf-dev bc \
	qemu-system-x86 busybox-static cpio postgresql chromium \
	python3-venv ca-certificates fonts-dejavu-core

.PHONY: setup apt venv test test-fast lab-report clean

setup: apt venv

apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages:" $$missing; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		fi; \
	else echo "not root or no apt-get: skipping Debian packages ($(APT_PACKAGES))"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: setup
	$(VENV)/bin/pytest -ra --junitxml=reports/junit.xml

test-fast: venv
	$(VENV)/bin/pytest -ra -m "not vmlab"

lab-report: setup
	$(HWT) lab up --kind vm
	$(HWT) ab --inventory .hwtests/lab/vm/inventory.yaml --html reports/vm-lab.html

clean:
	-$(HWT) lab down --kind netns
	-$(HWT) lab down --kind vm
	rm -rf $(VENV) .hwtests
