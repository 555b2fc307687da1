"""`kdns corefile` and `kdns serve --corefile`: kubeadm's default Corefile verbatim, the examples of
the Kubernetes "Customizing DNS Service" page, a kube-dns ConfigMap, and unsupported input with
its exact error lines. Every translation that can run is run, and answers are checked with
dnspython; upstreams are stubs on loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.request

import dns.flags
import dns.rcode
import pytest

from conftest import DATA, ROOT, Kdns, wait_for
from dnsstub import Stub
from kdnsproc import lines

CLUSTER = str(DATA / "cluster.yaml")
COREFILES = DATA / "corefiles"


def kdns_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdns", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def dig(server: Kdns, name: str, rdtype: str = "A") -> tuple[str, str, list[str]]:
    """(status, flags, answer lines) as dig prints them; skipped where dig is missing."""
    if shutil.which("dig") is None:
        pytest.skip("dig (bind9-dnsutils) not installed")
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(server.port), "+time=3", "+tries=1",
                          "+nocookie", "+noall", "+comments", "+answer", name, rdtype],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    status = re.search(r"status: (\w+)", out.stdout).group(1)
    flags = re.search(r"flags: ([a-z ]+);", out.stdout).group(1)
    records = [" ".join(line.split()) for line in out.stdout.splitlines()
               if line and not line.startswith(";")]
    return status, flags, records


def answers(server: Kdns, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    resp = server.query(name, rdtype)
    return dns.rcode.to_text(resp.rcode()), sorted(
        f"{rrset.name} {rrset.ttl} {rd.to_text()}" for rrset in resp.answer for rd in rrset)


@pytest.fixture
def upstream():
    stub = Stub(["www.example.com. 600 IN A 192.0.2.80",
                 "9.9.9.10.in-addr.arpa. 600 IN PTR outside.example.com."])
    yield stub
    stub.close()


KUBEADM = ("kdns serve --listen 0.0.0.0:53 --http 0.0.0.0:8080 --lameduck 5 --http 0.0.0.0:8181 "
           "--domain cluster.local --pods insecure --ttl 30 --in-cluster --fallthrough in-addr.arpa "
           "ip6.arpa --http 0.0.0.0:9153 --resolv-conf /etc/resolv.conf --max-concurrent 1000 "
           "--cache-ttl 30 --cache-denial-ttl 30 --loadbalance")


def test_kubeadm_default_corefile_translation():
    out = kdns_cli("corefile", str(COREFILES / "kubeadm"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == KUBEADM + "\n"
    assert out.stderr == ("kdns: note: kubeadm:21: reload: kdns reads the Corefile at startup; "
                          "restart it after a change (kubectl -n kube-system rollout restart "
                          "deployment kdns)\n")


def test_kubeadm_default_corefile_serves(upstream):
    # The source, listen address, http port and upstream come from the command line, which
    # wins over the Corefile's; everything else is the Corefile's.
    s = Kdns("--corefile", str(COREFILES / "kubeadm"), "--manifests", CLUSTER,
             "--upstream", f"127.0.0.1:{upstream.port}", "--http", "127.0.0.1:0")
    try:
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == (
            "NOERROR", ["kube-dns.kube-system.svc.cluster.local. 30 10.96.0.10"])      # ttl 30
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 30 192.0.2.80"])  # cache 30
        assert answers(s, "9.9.9.10.in-addr.arpa.", "PTR") == (        # fallthrough in-addr.arpa
            "NOERROR", ["9.9.9.10.in-addr.arpa. 30 outside.example.com."])
        assert answers(s, "nosuch.default.svc.cluster.local.") == ("NXDOMAIN", [])
        assert dig(s, "kube-dns.kube-system.svc.cluster.local") == (
            "NOERROR", "qr aa rd", ["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"])
        assert answers(s, "10-1-2-3.default.pod.cluster.local.") == (   # pods insecure
            "NOERROR", ["10-1-2-3.default.pod.cluster.local. 30 10.1.2.3"])
        port = int(s.log().split("http on 127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            assert r.status == 200
        assert f"kdns: from {COREFILES / 'kubeadm'}: {KUBEADM}\n" in s.log()
    finally:
        log = s.stop()
    assert s.proc.returncode == 0, log


CUSTOM = ("kdns serve --listen 0.0.0.0:53 --http 0.0.0.0:8080 --domain cluster.local --pods insecure "
          "--in-cluster --fallthrough in-addr.arpa ip6.arpa --http 0.0.0.0:9153 --upstream 172.16.0.1 "
          "--cache-ttl 30 --cache-denial-ttl 30 --loadbalance --forward consul.local=10.150.0.1")


def test_customizing_dns_example_translation():
    out = kdns_cli("corefile", str(COREFILES / "customizing-dns"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == CUSTOM + "\n"
    assert "kdns: note: customizing-dns:17: cache in a stub domain's block: the stub domain has a " \
           "forwarding cache of its own, its TTLs capped by --cache-ttl as every zone's\n" in out.stderr


@pytest.fixture
def consul():
    """The page's Consul server (10.150.0.1), on loopback."""
    stub = Stub(["web.service.consul.local. 600 IN A 10.150.1.1",
                 "www.example.com. 600 IN A 192.0.2.66"],        # never asked for it
                soa="consul.local. 600 IN SOA ns.consul.local. hostmaster.consul.local. 1 2 3 4 60")
    yield stub
    stub.close()


def loopback_corefile(tmp_path, text: str, upstream, consul) -> str:
    """The Corefile with the page's addresses moved onto the loopback stubs."""
    corefile = tmp_path / "Corefile"
    corefile.write_text(text.replace("172.16.0.1", f"127.0.0.1:{upstream.port}")
                        .replace("10.150.0.1", f"127.0.0.1:{consul.port}"))
    return str(corefile)


def flags(resp) -> str:
    return dns.flags.to_text(resp.flags)


def test_customizing_dns_example_serves(upstream, consul, tmp_path):
    """The page's whole Corefile: the upstream example and the consul.local stub domain."""
    corefile = loopback_corefile(tmp_path, (COREFILES / "customizing-dns").read_text(), upstream, consul)
    s = Kdns("--corefile", corefile, "--manifests", CLUSTER, "--http", "127.0.0.1:0")
    try:
        r = s.query("web.service.consul.local.")
        assert (dns.rcode.to_text(r.rcode()), flags(r), lines(r.answer), lines(r.authority)) == (
            "NOERROR", "QR RD RA", ["web.service.consul.local. 30 IN A 10.150.1.1"], [])   # cache 30
        r = s.query("nope.service.consul.local.")
        assert (dns.rcode.to_text(r.rcode()), lines(r.answer), lines(r.authority)) == (
            "NXDOMAIN", [], ["consul.local. 30 IN SOA ns.consul.local. hostmaster.consul.local. 1 2 3 4 60"])
        assert answers(s, "web.service.consul.local.") == (
            "NOERROR", ["web.service.consul.local. 30 10.150.1.1"])
        assert dig(s, "web.service.consul.local") == (
            "NOERROR", "qr rd ra", ["web.service.consul.local. 30 IN A 10.150.1.1"])
        assert consul.count(name="web.service.consul.local") == 1          # then from its cache
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 30 192.0.2.80"])
        assert consul.count(name="www.example.com") == 0
        assert upstream.count(name="web.service.consul.local") == 0
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == (
            "NOERROR", ["kube-dns.kube-system.svc.cluster.local. 5 10.96.0.10"])
        assert f"kdns: forwarding consul.local to 127.0.0.1:{consul.port}\n" in s.log()
    finally:
        log = s.stop()
    assert s.proc.returncode == 0, log


def test_customizing_dns_upstream_example_serves(upstream, tmp_path):
    # The page's upstream example (its first server block), the upstream moved onto the stub.
    text = (COREFILES / "customizing-dns").read_text().split("consul.local:53")[0]
    corefile = tmp_path / "Corefile"
    corefile.write_text(text.replace("forward . 172.16.0.1", f"forward . 127.0.0.1:{upstream.port}"))
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER)
    try:
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 30 192.0.2.80"])
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == (
            "NOERROR", ["kube-dns.kube-system.svc.cluster.local. 5 10.96.0.10"])     # no ttl: 5
    finally:
        s.stop()


def test_corefile_forward_except_and_a_stub_block_inside_the_cluster_zone(upstream, consul, tmp_path):
    text = f"""\
.:53 {{
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
    }}
    forward . 127.0.0.1:{upstream.port} {{
       except blocked.example.com
    }}
}}
consul.local:53 svc.cluster.local:53 {{
    forward . 127.0.0.1:{consul.port}
}}
"""
    corefile = tmp_path / "Corefile"
    corefile.write_text(text)
    out = kdns_cli("corefile", str(corefile))
    assert (out.returncode, out.stdout) == (0, (
        "kdns serve --listen 0.0.0.0:53 --domain cluster.local --pods insecure --in-cluster "
        f"--fallthrough in-addr.arpa ip6.arpa --upstream 127.0.0.1:{upstream.port} --forward-except "
        f"blocked.example.com --forward consul.local=127.0.0.1:{consul.port} --forward "
        f"svc.cluster.local=127.0.0.1:{consul.port} --no-loadbalance --forward-inside-cluster-zone\n"))
    assert out.stderr == ("kdns: note: Corefile:12: svc.cluster.local is inside a zone kdns serves "
                          "from the cluster's data; as in CoreDNS, its names go to the stub domain's "
                          "upstreams instead\n")
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER)
    try:
        r = s.query("x.blocked.example.com.")
        assert (dns.rcode.to_text(r.rcode()), flags(r), r.answer, r.authority) == (
            "SERVFAIL", "QR RD RA", [], [])
        assert upstream.count(name="x.blocked.example.com") == 0
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 600 192.0.2.80"])
        # svc.cluster.local is the stub's (NXDOMAIN there), the rest of the cluster zone kdns's
        r = s.query("kube-dns.kube-system.svc.cluster.local.")
        assert (dns.rcode.to_text(r.rcode()), flags(r), r.answer) == ("NXDOMAIN", "QR RD RA", [])
        assert consul.count(name="kube-dns.kube-system.svc.cluster.local") == 1
        assert answers(s, "10-1-2-3.default.pod.cluster.local.") == (
            "NOERROR", ["10-1-2-3.default.pod.cluster.local. 5 10.1.2.3"])
    finally:
        s.stop()


def test_corefile_hosts_rewrite_and_kubernetes_options(upstream, tmp_path):
    hosts = tmp_path / "custom.hosts"
    hosts.write_text("10.0.0.9 db.internal\n")
    corefile = tmp_path / "Corefile"
    corefile.write_text(f"""\
.:53 {{
    errors
    hosts {hosts} {{
        10.0.0.8 pinned.example.org
        fallthrough
    }}
    rewrite name exact db.example.com web.prod.svc.cluster.local
    rewrite name suffix .corp.example .svc.cluster.local answer auto
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       namespaces prod default
       ignore empty_service
       fallthrough in-addr.arpa ip6.arpa
    }}
    forward . 127.0.0.1:{upstream.port} {{
       policy sequential
    }}
}}
""")
    out = kdns_cli("corefile", str(corefile))
    assert out.stdout == (
        f"kdns serve --listen 0.0.0.0:53 --hosts {hosts} --hosts-entry '10.0.0.8 pinned.example.org' "
        "--rewrite-name db.example.com=web.prod.svc.cluster.local --rewrite-suffix "
        "corp.example=svc.cluster.local --domain cluster.local --pods insecure --namespaces "
        "prod,default --ignore-empty-service --in-cluster --fallthrough in-addr.arpa ip6.arpa "
        f"--upstream 127.0.0.1:{upstream.port} --no-loadbalance\n")
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER)
    try:
        assert answers(s, "db.internal.") == ("NOERROR", ["db.internal. 5 10.0.0.9"])
        assert answers(s, "pinned.example.org.") == ("NOERROR", ["pinned.example.org. 5 10.0.0.8"])
        web = answers(s, "web.prod.svc.cluster.local.")
        assert answers(s, "db.example.com.") == (
            "NOERROR", [r.replace("web.prod.svc.cluster.local.", "db.example.com.") for r in web[1]])
        assert answers(s, "web.prod.corp.example.") == (
            "NOERROR", [r.replace("svc.cluster.local.", "corp.example.") for r in web[1]])
        assert answers(s, "empty.prod.svc.cluster.local.") == ("NXDOMAIN", [])
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == ("NXDOMAIN", [])
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 600 192.0.2.80"])
    finally:
        s.stop()


def test_kube_dns_configmap_translation():
    from kdns import kubedns
    assert kubedns.translate_kube_dns(str(COREFILES / "kube-dns-configmap.yaml")) == [
        "--forward", "acme.local=1.2.3.4", "--upstream", "8.8.8.8", "--upstream", "8.8.4.4"]


def test_kube_dns_configmap_serves(upstream, consul, tmp_path):
    """The page's kube-dns ConfigMap (stubDomains, upstreamNameservers), its addresses on loopback."""
    text = (COREFILES / "kube-dns-configmap.yaml").read_text()
    cm = tmp_path / "kube-dns.yaml"
    cm.write_text(text.replace("acme.local", "consul.local")
                  .replace('"1.2.3.4"', f'"127.0.0.1:{consul.port}"')
                  .replace('["8.8.8.8", "8.8.4.4"]', f'["127.0.0.1:{upstream.port}"]'))
    s = Kdns("--kube-dns-configmap", str(cm), "--manifests", CLUSTER)
    try:
        r = s.query("web.service.consul.local.")
        assert (dns.rcode.to_text(r.rcode()), flags(r), lines(r.answer)) == (
            "NOERROR", "QR RD RA", ["web.service.consul.local. 600 IN A 10.150.1.1"])
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 600 192.0.2.80"])
        assert consul.count(name="www.example.com") == 0
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == (
            "NOERROR", ["kube-dns.kube-system.svc.cluster.local. 5 10.96.0.10"])
    finally:
        s.stop()


def test_kube_dns_configmap_upstreams_serve(upstream, tmp_path):
    cm = tmp_path / "kube-dns.yaml"
    cm.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-dns, namespace: kube-system}\n"
                  f"data:\n  upstreamNameservers: |\n    [\"127.0.0.1:{upstream.port}\"]\n")
    s = Kdns("--kube-dns-configmap", str(cm), "--manifests", CLUSTER)
    try:
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 600 192.0.2.80"])
    finally:
        s.stop()


UNSUPPORTED = """\
.:53 {
    errors
    etcd skydns.local {
        path /skydns
    }
    kubernetes cluster.local {
        pods insecure
        endpoint https://10.0.0.1:6443
    }
    forward . 8.8.8.8 {
        force_tcp
    }
    cache 30 {
        prefetch 10
    }
    hosts {
        10.0.0.1 a.example
    }
    rewrite name regex (.*)\\.example {1}.svc.cluster.local
}
"""


def test_unsupported_input_is_an_exact_error(tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(UNSUPPORTED)
    out = kdns_cli("corefile", str(corefile))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == (
        "kdns: Corefile:3: plugin 'etcd' is not supported by kdns\n"
        "kdns: Corefile:8: kubernetes option 'endpoint' is not supported by kdns\n"
        "kdns: Corefile:11: forward option 'force_tcp' is not supported by kdns\n"
        "kdns: Corefile:14: cache option 'prefetch' is not supported by kdns\n"
        "kdns: Corefile:16: hosts without fallthrough answers NXDOMAIN for every other name; kdns "
        "always falls through: add 'fallthrough' to the hosts block\n"
        "kdns: Corefile:19: rewrite name regex (.*)\\.example {1}.svc.cluster.local: only 'rewrite "
        "name exact|suffix FROM TO' is supported by kdns\n")
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER, wait=False)
    assert s.wait_exit() == 2
    assert "kdns: Corefile:3: plugin 'etcd' is not supported by kdns\n" in s.log()


@pytest.mark.parametrize("text, error", [
    (".:53 {\n  kubernetes cluster.local\n", "Corefile:1: server block not closed with '}'"),
    (".:53 {\n  forward . 8.8.8.8\n}\n", "Corefile:1: no kubernetes plugin: kdns serves a cluster, say which zone"),
    (".:53 {\n  kubernetes cluster.local\n}\n.:5353 {\n  forward . 8.8.8.8\n}\n",
     "Corefile:1: server blocks on ports 53, 5353: kdns serves one configuration on every --listen "
     "address; use one port"),
    ("import common\n", "Corefile:1: 'import' is not supported by kdns"),
    ("tls://.:853 {\n  kubernetes cluster.local\n}\n",
     "Corefile:1: server 'tls://.:853': only plain DNS (dns://) is supported by kdns"),
])
def test_malformed_corefiles(tmp_path, text, error):
    corefile = tmp_path / "Corefile"
    corefile.write_text(text)
    out = kdns_cli("corefile", str(corefile))
    assert (out.returncode, out.stderr) == (2, f"kdns: {error}\n")


def test_kubernetes_options_and_zones_translation(tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text("""\
cluster.local:53 example.internal:53 {
    kubernetes cluster.local example.internal in-addr.arpa {
        endpoint_pod_names
        labels app=web,tier!=db
        noendpoints
        kubeconfig /etc/kube/config staging
    }
    loadbalance round_robin
}
""")
    out = kdns_cli("corefile", str(corefile))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == ("kdns serve --listen 0.0.0.0:53 --domain cluster.local --zone example.internal "
                          "--endpoint-pod-names --labels 'app=web,tier!=db' --noendpoints --kubeconfig "
                          "/etc/kube/config --context staging --no-fallthrough --loadbalance "
                          "--resolv-conf ''\n")     # no 'forward .': nothing else is forwarded


def test_the_command_line_wins_over_the_corefile(upstream, tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n  kubernetes cluster.local {\n    ttl 30\n  }\n"
                        "  forward . 192.0.2.53\n}\n")
    # the Corefile says --no-fallthrough and an unreachable upstream; the command line says otherwise
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER, "--ttl", "9",
             "--fallthrough", "in-addr.arpa", "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        assert answers(s, "kube-dns.kube-system.svc.cluster.local.") == (
            "NOERROR", ["kube-dns.kube-system.svc.cluster.local. 9 10.96.0.10"])
        assert answers(s, "9.9.9.10.in-addr.arpa.", "PTR") == (
            "NOERROR", ["9.9.9.10.in-addr.arpa. 600 outside.example.com."])
    finally:
        s.stop()


def test_corefile_log_policy_and_loop_serve(tmp_path):
    """log (one CoreDNS-format line per query), forward's policy round_robin over two upstreams,
    loop and errors, through a Corefile kdns runs."""
    one, two = Stub(["a.example.org. 60 IN A 192.0.2.1"]), Stub(["b.example.org. 60 IN A 192.0.2.2"])
    corefile = tmp_path / "Corefile"
    corefile.write_text(f"""\
.:53 {{
    errors
    log
    kubernetes cluster.local
    forward . 127.0.0.1:{one.port} 127.0.0.1:{two.port} {{
        policy round_robin
    }}
    loop
}}
""")
    out = kdns_cli("corefile", str(corefile))
    assert (out.returncode, out.stderr, out.stdout) == (0, "", (
        "kdns serve --listen 0.0.0.0:53 --log-queries --domain cluster.local --in-cluster "
        f"--no-fallthrough --upstream 127.0.0.1:{one.port} --upstream 127.0.0.1:{two.port} "
        "--policy round_robin --no-loadbalance\n"))
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER)
    try:
        s.query("a.example.org.")
        s.query("b.example.org.")
        assert (one.count(name="a.example.org"), two.count(name="b.example.org")) == (1, 1)
        assert (one.count(name="b.example.org"), two.count(name="a.example.org")) == (0, 0)
        assert answers(s, "web.prod.svc.cluster.local.") == (
            "NOERROR", ["web.prod.svc.cluster.local. 5 10.96.10.1"])
        assert wait_for(lambda: '"A IN web.prod.svc.cluster.local. udp ' in s.log())
        line = next(x for x in s.log().splitlines() if '"A IN web.prod.svc.cluster.local. udp ' in x)
        assert re.search(r'127\.0\.0\.1:\d+ - \d+ "A IN web\.prod\.svc\.cluster\.local\. udp \d+ false '
                         r'\d+" NOERROR qr,aa,rd \d+ [\d.]+s$', line), line
    finally:
        s.stop()
        one.close()
        two.close()


def test_corefile_cache_success_and_denial_caps_serve(upstream, tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(f"""\
.:53 {{
    kubernetes cluster.local
    forward . 127.0.0.1:{upstream.port}
    cache 300 {{
        success 5000 60
        denial 2000 10
    }}
}}
""")
    out = kdns_cli("corefile", str(corefile))
    assert (out.returncode, out.stderr, out.stdout) == (0, "", (
        "kdns serve --listen 0.0.0.0:53 --domain cluster.local --in-cluster --no-fallthrough "
        f"--upstream 127.0.0.1:{upstream.port} --cache-ttl 300 --cache-denial-ttl 300 --cache-ttl 60 "
        "--cache-denial-ttl 10 --cache-size 5000 --no-loadbalance\n"))
    s = Kdns("--corefile", str(corefile), "--manifests", CLUSTER)
    try:
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 60 192.0.2.80"])
        r = s.query("nosuch.example.com.")
        assert (dns.rcode.to_text(r.rcode()), lines(r.authority)) == ("NXDOMAIN", [
            "example.com. 10 IN SOA ns.example.com. hostmaster.example.com. 1 7200 1800 86400 30"])
    finally:
        s.stop()


def test_customizing_dns_example_with_the_api_as_the_source(upstream, consul, tmp_path, api):
    """--kubeconfig on the command line replaces the Corefile's --in-cluster: the live (fake) API's
    Services beside the page's upstream and consul.local stub domain."""
    from conftest import eventually
    from fakeapi import service

    api.create(service("prod", "web", "10.96.0.20"))
    corefile = loopback_corefile(tmp_path, (COREFILES / "customizing-dns").read_text(), upstream, consul)
    s = Kdns("--corefile", corefile, "--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"),
             "--api-timeout", "1")
    try:
        eventually(s, "web.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.20"]))
        assert answers(s, "web.service.consul.local.") == (
            "NOERROR", ["web.service.consul.local. 30 10.150.1.1"])
        assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 30 192.0.2.80"])
        assert (consul.count(name="web.service.consul.local"), consul.count(name="www.example.com"),
                upstream.count(name="web.service.consul.local")) == (1, 0, 0)
    finally:
        s.stop()
