"""hyporay's own rules for a cluster-launcher file (``hyporay validate-cluster``): GPU worker types, integer node
resources, the image's Ray = the installed Ray, storage set once and shared, MLflow on the head that workers can
reach, the head's environment, no port but SSH open to any public address (CIDRs reasoned about), no service bound
to every interface, an explicit AMI and S3 access for GPU workers on AWS. Each adds one-line problems to a
``Result``."""
from __future__ import annotations

import ipaddress
import json
import re
import shlex
from typing import Any

from hyporay.cluster.result import COMMAND_LISTS, DOC_NETS, PLACEHOLDER, REMOTE_SCHEMES, STORAGE_ENV, Result, short


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _start_flag(cmds: list, flag: str) -> list[str]:
    """Values of ``--flag=V`` / ``--flag V`` in a list of shell commands."""
    out = []
    for c in cmds or []:
        out += re.findall(rf"{re.escape(flag)}[= ]+('[^']*'|\"[^\"]*\"|\S+)", str(c))
    return [v.strip("'\"") for v in out]


def check_nodes(cfg: dict, res: Result, local: bool) -> str:
    if local:
        ips = (cfg.get("provider") or {}).get("worker_ips") or []
        if not ips:
            res.problems.append("provider.worker_ips: no worker machine listed; the GPU machines run the trials")
        for flag in ("--num-gpus", "--num-cpus"):
            for v in _start_flag(cfg.get("worker_start_ray_commands"), flag):
                if not re.fullmatch(r"\d+", v) or (flag == "--num-gpus" and int(v) < 1):
                    res.problems.append(f"worker_start_ray_commands: {flag}={v} must be a whole number"
                                        + (" >= 1 (GPU workers)" if flag == "--num-gpus" else ""))
        for v in _start_flag(cfg.get("worker_start_ray_commands", []) + cfg.get("head_start_ray_commands", []),
                             "--resources"):
            try:
                bad = {k: x for k, x in json.loads(v).items() if not _is_int(x)}
            except (ValueError, AttributeError):
                continue
            for k, x in bad.items():
                res.problems.append(f"start commands: --resources {k}={x} is not an integer (node resources "
                                    "are whole units)")
        return f"head {cfg['provider'].get('head_ip')}, {len(ips)} worker machine(s) (GPUs detected by Ray)"

    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    gpu_types = []
    for name, nt in types.items():
        resources = (nt or {}).get("resources") if isinstance(nt, dict) else None
        if not isinstance(resources, dict):
            continue
        for k, v in resources.items():
            if not _is_int(v):
                res.problems.append(f"available_node_types.{name}.resources.{k}: {short(v)} is not an integer "
                                    "(node resources are whole units; a trial's share of a GPU is the sweep's "
                                    "--gpu-fraction)")
            elif v < 0:
                res.problems.append(f"available_node_types.{name}.resources.{k}: {v} is negative")
        gpus = resources.get("GPU")
        if name != head and _is_int(gpus) and gpus >= 1:
            if nt.get("max_workers", 1) == 0:
                res.problems.append(f"available_node_types.{name}: max_workers is 0, so its GPUs can never be used")
            else:
                gpu_types.append((name, nt))
    if types and not gpu_types:
        res.problems.append("available_node_types: no worker type declares a GPU (add e.g. resources: "
                            "{CPU: 8, GPU: 1} to a worker type; the paper profile's trials ask for whole GPUs)")
    head_res = (types.get(head) or {}).get("resources") or {}
    head_inst = ((types.get(head) or {}).get("node_config") or {}).get("InstanceType")
    parts = [f"head {head}" + (f" ({head_inst}, {head_res.get('CPU', '?')} CPU)" if head_inst else "")]
    for name, nt in gpu_types:
        inst = (nt.get("node_config") or {}).get("InstanceType")
        parts.append(f"{name} {nt.get('min_workers', 0)}-{nt.get('max_workers', '?')} x "
                     f"{nt['resources']['GPU']} GPU" + (f" ({inst})" if inst else ""))
    return "; ".join([parts[0], "GPU workers " + ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _images(cfg: dict) -> list[tuple[str, str]]:
    """(field, image) of every container image the cluster would run."""
    d = cfg.get("docker") or {}
    out = [(f"docker.{k}", d[k]) for k in ("image", "head_image", "worker_image") if d.get(k)]
    for name, nt in (cfg.get("available_node_types") or {}).items():
        img = ((nt or {}).get("docker") or {}).get("worker_image") if isinstance(nt, dict) else None
        if img:
            out.append((f"available_node_types.{name}.docker.worker_image", img))
    return out


def check_images(cfg: dict, res: Result) -> str:
    import ray

    want = ray.__version__
    images = _images(cfg)
    if not images:
        res.problems.append(f"docker.image: not set; run every node in rayproject/ray:{want}-py311-gpu (the Ray "
                            "that hyporay pins)")
        return "-"
    for where, img in images:
        repo, _, tag = str(img).rpartition(":") if ":" in str(img).split("/")[-1] else (str(img), "", "")
        if repo.endswith("rayproject/ray-ml"):
            res.problems.append(f"{where}: {img}: the rayproject/ray-ml images are no longer published (after "
                                f"Ray 2.49); use rayproject/ray:{want}-py311-gpu and install the project in "
                                "setup_commands")
            continue
        m = re.match(r"(\d+\.\d+\.\d+)", tag)
        if not m:
            res.problems.append(f"{where}: {img}: the tag names no Ray version; use rayproject/ray:{want}-py311-gpu "
                                f"(installed Ray is {want})")
        elif m.group(1) != want:
            res.problems.append(f"{where}: {img} runs Ray {m.group(1)} but the installed Ray is {want}; use "
                                f"rayproject/ray:{want}-py311-gpu (driver and cluster must run the same Ray)")
    return ", ".join(sorted({str(i) for _, i in images}))


def _docker_options(cfg: dict) -> list[str]:
    d = cfg.get("docker") or {}
    opts: list[str] = []
    for k in ("run_options", "head_run_options", "worker_run_options"):
        for o in d.get(k) or []:
            try:
                opts += shlex.split(str(o))
            except ValueError:
                opts.append(str(o))
    return opts


def _docker_envs(opts: list[str]) -> list[str]:
    out = []
    for i, o in enumerate(opts):
        if o.startswith(("--env=", "-e=")):
            out.append(o.split("=", 1)[1])
        elif o in ("-e", "--env") and i + 1 < len(opts):
            out.append(opts[i + 1])
    return out


def _docker_volumes(opts: list[str]) -> list[str]:
    """Container-side paths of the bind mounts (-v/--volume HOST:CONTAINER[:mode])."""
    out = []
    for i, o in enumerate(opts):
        spec = None
        if o.startswith(("--volume=", "-v=")):
            spec = o.split("=", 1)[1]
        elif o in ("-v", "--volume") and i + 1 < len(opts):
            spec = opts[i + 1]
        if spec and ":" in spec:
            out.append(spec.split(":")[1])
    return out


def _storage_settings(cfg: dict) -> list[tuple[str, str]]:
    """(where, value) of every place that sets HYPORAY_STORAGE_PATH."""
    found = [("docker run_options", e.split("=", 1)[1]) for e in _docker_envs(_docker_options(cfg))
             if e.startswith(f"{STORAGE_ENV}=")]
    pat = re.compile(rf"{STORAGE_ENV}=('[^']*'|\"[^\"]*\"|[^\s;&|]+)")
    for k in COMMAND_LISTS:
        for c in cfg.get(k) or []:
            for v in pat.findall(str(c)):
                found.append((k, v.strip("'\"")))
    return found


def check_storage(cfg: dict, res: Result) -> str:
    found = _storage_settings(cfg)
    if not found:
        res.problems.append(f"storage: {STORAGE_ENV} is not set; set it once, e.g. docker.run_options: "
                            f"[--env={STORAGE_ENV}=s3://BUCKET/hyporay] (Ray Tune's storage_path: multi-node "
                            "sweeps need storage every node reaches)")
        return "-"
    values = {v for _, v in found}
    if len(values) > 1 or len(found) > 1:
        res.problems.append(f"storage: {STORAGE_ENV} is set in {len(found)} places ("
                            + ", ".join(f"{w}: {v}" for w, v in found) + "); set it in one")
    value = found[0][1]
    if value.startswith(REMOTE_SCHEMES):
        return value
    if "://" in value:
        res.problems.append(f"storage: {STORAGE_ENV}={value}: unsupported scheme; use s3://, gs:// or a shared "
                            "NFS path")
        return value
    if not value.startswith("/"):
        res.problems.append(f"storage: {STORAGE_ENV}={value} is a relative local path; use s3://BUCKET/prefix, "
                            "gs://... or an absolute path on an NFS mount shared by all nodes")
        return value
    # a filesystem path is shared only if it is a mount: a volume of the container (docker) or mounted by a command
    if cfg.get("docker"):
        shared = any(value == v.rstrip("/") or value.startswith(v.rstrip("/") + "/")
                     for v in _docker_volumes(_docker_options(cfg)) if v.startswith("/"))
    else:
        cmds = " ".join(str(c) for k in COMMAND_LISTS for c in cfg.get(k) or [])
        shared = "mount" in cmds and any(value.startswith(p) for p in re.findall(r"mount\b.*?\s(/\S+)", cmds))
    if not shared:
        res.problems.append(f"storage: {STORAGE_ENV}={value} is a local path on each node (not on a volume "
                            "mounted into the containers); use s3://BUCKET/prefix, gs://... or an NFS mount "
                            "passed to every container with docker run_options -v")
    return value


def check_mlflow(cfg: dict, res: Result) -> str:
    cmds = [str(c) for k in ("head_setup_commands", "head_start_ray_commands") for c in cfg.get(k) or []]
    server = [c for c in cmds if re.search(r"\bmlflow\s+server\b", c)]
    if not server:
        res.problems.append("mlflow: no `mlflow server` is started in head_setup_commands or head_start_ray_commands; "
                            "trials on worker nodes need a tracking server on the head")
        return "-"
    host = (_start_flag(server, "--host") or _start_flag(server, "-h") or ["127.0.0.1"])[0]
    if host in ("127.0.0.1", "localhost"):
        res.problems.append(f"mlflow: the server binds {host} (MLflow's default); workers cannot reach it: bind "
                            "the head's private IP (--host $IP)")
    return (_start_flag(server, "--port") or _start_flag(server, "-p") or ["5000"])[0]


def check_head_env(cfg: dict, res: Result) -> None:
    """Sweeps started on the head read both from the environment: without RAY_ADDRESS the engine starts a new
    single-node Ray (it never guesses a cluster), without MLFLOW_TRACKING_URI it logs to a SQLite file on the
    head that no worker can reach."""
    envs = {e.split("=", 1)[0] for e in _docker_envs(_docker_options(cfg)) if "=" in e}
    cmds = " ".join(str(c) for k in ("setup_commands", "head_setup_commands") for c in cfg.get(k) or [])
    why = {"RAY_ADDRESS": "sweeps started there would run on a single-node Ray of their own",
           "MLFLOW_TRACKING_URI": "sweeps started there would log to a SQLite file the workers cannot reach"}
    for var, consequence in why.items():
        if var not in envs and not re.search(rf"\b{var}=", cmds):
            res.problems.append(f"head_setup_commands: {var} is not exported on the head; {consequence} (e.g. "
                                f"echo \"export {var}=...\" >> ~/.bashrc)")


# Address blocks no internet host can come from (RFC 1918/6598/5737/4193, loopback, link-local, reserved):
# an ingress rule whose CIDR lies inside one of them admits no public address.
NON_PUBLIC = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
    "::1/128", "::/128", "fc00::/7", "fe80::/10", "2001:db8::/32")]


def admits_public(cidr: str) -> bool:
    """Whether an ingress CIDR lets in some public internet address (``0.0.0.0/1`` does, ``10.0.0.0/8`` does not).

    Unparseable CIDRs count as public: a rule that cannot be reasoned about is not known to be safe."""
    try:
        net = ipaddress.ip_network(str(cidr).strip(), strict=False)
    except ValueError:
        return True
    return not any(net.version == b.version and net.subnet_of(b) for b in NON_PUBLIC)


def check_exposure(cfg: dict, res: Result) -> None:
    rules = ((cfg.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    for r in rules:
        if not isinstance(r, dict):
            continue
        cidrs = [x.get("CidrIp") for x in r.get("IpRanges") or [] if isinstance(x, dict)]
        cidrs += [x.get("CidrIpv6") for x in r.get("Ipv6Ranges") or [] if isinstance(x, dict)]
        public = [str(c) for c in cidrs if c and admits_public(c)]
        lo, hi = r.get("FromPort"), r.get("ToPort")
        if str(r.get("IpProtocol", "tcp")) == "-1":  # every protocol: every port
            lo, hi = 0, 65535
        if public and not (lo == hi == 22):
            ports = lo if lo == hi else f"{lo}-{hi}"
            res.problems.append(f"provider.security_group.IpPermissions: port {ports} is open to public addresses "
                                f"({', '.join(public)}); only SSH (22) may be: reach MLflow and the dashboard by SSH "
                                "port forwarding (ray attach -p 5000, ray dashboard) instead")


WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "*", "")


def check_binds(cfg: dict, res: Result) -> None:
    """Services inside the cluster bind the private address (or loopback), never every interface."""
    cmds = [str(c) for k in COMMAND_LISTS for c in cfg.get(k) or []]
    for flag, what in (("--dashboard-host", "the Ray dashboard (its Jobs API runs code unauthenticated)"),
                       ("--node-ip-address", "Ray"), ("--ray-client-server-host", "Ray client")):
        for v in _start_flag(cmds, flag):
            if v in WILDCARD_HOSTS:
                res.problems.append(f"head_start_ray_commands: {flag}={v} binds {what} on every interface; leave "
                                    "the dashboard on 127.0.0.1 (Ray's default) and reach it with `ray dashboard`")
    for c in cmds:
        if re.search(r"\bmlflow\s+server\b", c):
            for v in _start_flag([c], "--host") + _start_flag([c], "-h"):
                if v in WILDCARD_HOSTS:
                    res.problems.append(f"mlflow: the server binds {v or '0.0.0.0'} (every interface); bind the head's "
                                        "private IP (--host $IP, for the workers) and 127.0.0.1 (--gunicorn-opts "
                                        "'--bind 127.0.0.1:PORT', for the `ray attach -p` tunnel)")
            for v in re.findall(r"--bind[= ]+(\S+)", c):
                if v.strip("'\"").rsplit(":", 1)[0] in WILDCARD_HOSTS:
                    res.problems.append(f"mlflow: --bind {v.strip(chr(39) + chr(34))} binds every interface; bind "
                                        "127.0.0.1 and the head's private IP only")


def check_ami(cfg: dict, res: Result) -> None:
    if (cfg.get("provider") or {}).get("type") != "aws":
        return
    for name, nt in (cfg.get("available_node_types") or {}).items():
        ami = str(((nt or {}).get("node_config") or {}).get("ImageId", "")).lower()
        if ami in ("", "latest_dlami"):
            res.problems.append(f"available_node_types.{name}.node_config: no ImageId; Ray's default AMI (Deep "
                                "Learning AMI Ubuntu 18.04 V71, CUDA 11.2 driver) is too old for the CUDA 12 ray "
                                "image: use a current Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)")


def check_worker_iam(cfg: dict, res: Result, storage: str) -> None:
    if (cfg.get("provider") or {}).get("type") != "aws" or not storage.startswith("s3://"):
        return
    head = cfg.get("head_node_type")
    for name, nt in (cfg.get("available_node_types") or {}).items():
        if name == head or not isinstance(nt, dict):
            continue
        gpus = (nt.get("resources") or {}).get("GPU")
        if _is_int(gpus) and gpus >= 1 and "IamInstanceProfile" not in (nt.get("node_config") or {}):
            res.problems.append(f"available_node_types.{name}.node_config: no IamInstanceProfile; its trials "
                                f"cannot write checkpoints to {storage} (Ray gives only the head a profile)")


def notes(config: dict, res: Result) -> None:
    """Placeholders still to fill in (not errors: the shipped files are templates)."""
    left = sorted(set(PLACEHOLDER.findall(json.dumps(config, default=str))))
    if left:
        res.notes.append("placeholders marked CHANGE-ME are still to be replaced before `ray up`")
    prov = config.get("provider") or {}
    ips = [prov.get("head_ip")] + list(prov.get("worker_ips") or [])
    doc = []
    for ip in ips:
        try:
            if any(ipaddress.ip_address(str(ip)) in n for n in DOC_NETS):
                doc.append(str(ip))
        except ValueError:
            pass
    if doc:
        res.notes.append(f"provider: {', '.join(doc)} are documentation addresses (RFC 5737): put your machines' "
                         "addresses there")



