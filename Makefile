# hwtests: the two commands a fresh machine needs (see README.md).
#   make lab-report   set up, build the QEMU lab, compare two real kernel builds, write the HTML report
#   make test         set up and run the project's own tests (lab tiers included; needs root)

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
HWT     = $(VENV)/bin/hwtests

# Debian packages: lab hosts (sshd, iperf3, ethtool, ping), builds (gcc, make, libelf for
# kernel modules), the VM lab (qemu, busybox, cpio), PostgreSQL and Chromium for the tests,
# openssl for the netns lab's password logins.
APT_PACKAGES = openssh-server openssh-client iperf3 ethtool iproute2 iputils-ping procps \
	util-linux kmod xz-utils gcc make libc6-dev libelf-dev bc \
	qemu-system-x86 busybox-static cpio postgresql chromium \
	python3-venv ca-certificates fonts-dejavu-core openssl debian-archive-keyring

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

# The main job asks what a kernel developer asks today: the newest stable kernel (deb7,
# trixie-backports' 7.x) against the current long-term one (deb6.12). Under TCG every
# instruction is emulated (about 100x slower than hardware), so it runs fewer loops per
# load; 3 loads per boot x 2 boots per build give the gate 6 samples per build and test
# in one look (--max-rounds 2: no extension boots, to stay within the job's time). On deb7 io_uring zcrx
# runs device-less (copy fallback, functional). The VMs are stopped at the end whatever
# happened. A gate verdict (0 same, 1 regression, 3 inconclusive) is the job's result,
# not its failure.
LAB_ENV = HWTESTS_PP_LOOPS=100000 HWTESTS_PP_REPEAT=3 HWTESTS_PP_TIMEOUT=300 \
	HWTESTS_LINERATE_DURATION=3 HWTESTS_LINERATE_REPEAT=1 HWTESTS_LINERATE_WARMUP=1 HWTESTS_LINERATE_COOLDOWN=0

lab-report: setup
	@trap '$(HWT) lab down --kind vm' EXIT INT TERM; \
	$(HWT) lab up --kind vm --kernel-build deb6.12 || exit $$?; \
	$(LAB_ENV) $(HWT) ab --inventory .hwtests/lab/vm/inventory.yaml --baseline deb6.12 --candidate deb7 \
		--max-rounds 2 --html reports/vm-lab.html; rc=$$?; \
	case $$rc in 0|1|3) echo "main job done (gate exit $$rc): report reports/vm-lab.html";; \
	*) echo "main job failed (exit $$rc)" >&2; exit $$rc;; esac

clean:
	-$(HWT) lab down --kind netns
	-$(HWT) lab down --kind vm
	rm -rf $(VENV) .hwtests
