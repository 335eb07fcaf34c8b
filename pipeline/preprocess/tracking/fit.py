"""The fitting math of rule ``track_face``: a per-subject linear face model, pose and focal length.

Conventions (also in docs/artifacts.md, ``tracking/``):

* **Head space** = the face model's canonical space = mediapipe's canonical face mesh frame:
  x to the subject's left (image right in a frontal view), y up, z out of the face towards a
  frontal camera; unit: centimetres (the canonical mesh is metric).
* **Camera** (fitting): OpenCV pinhole, x right, y down, z forward; ``u = f X/Z + cx``.
  ``F = diag(1, -1, -1)`` turns head space into that frame for the identity rotation, so a
  frontal head has rotation ~0: ``X_cam = F R(omega) X_head + t``. In OpenGL camera coordinates
  (x right, y up, looking down -z) that is ``X_gl = R(omega) X_head + F t``.
* **Face model**: ``S(e) = mean + identity + (basis @ e).reshape(K, 3)``; ``e`` has unit prior
  variance per component (the PCA basis columns carry the singular values).
* Per frame the pose is fitted as ``omega`` (axis-angle), the projected head origin ``(u0, v0)`` in
  pixels and the log image scale ``log s`` (pixels per cm at the head's depth); then
  ``tz = f / s``, ``tx = (u0 - cx) / s``, ``ty = (v0 - cy) / s``. With this parameterisation the focal
  length only controls perspective distortion, which keeps the joint problem well conditioned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import numpy as np
import torch

log = logging.getLogger("pipeline.preprocess.tracking.track")

FLIP = np.diag([1.0, -1.0, -1.0])  # head space (y up, z to viewer) <-> OpenCV camera (y down, z forward)
N_MESH = 468                       # canonical mesh vertices; 468..477 are the iris points
GEOMETRY_ENTRY = "geometry_pipeline_metadata_landmarks.binarypb"


# ----------------------------------------------------------------------------- canonical mesh

@dataclass(frozen=True)
class CanonicalMesh:
    vertices: np.ndarray        # [468, 3] float64, cm, head space
    triangles: np.ndarray       # [T, 3] int32
    procrustes_ids: np.ndarray  # [P] int32: landmarks mediapipe uses for its rigid pose
    procrustes_w: np.ndarray    # [P] float64


def _varint(b: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return out, i


def _fields(b: bytes):
    """Protobuf wire-format fields (number, wire type, value) of one message."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(b, i)
        elif wt == 1:
            val, i = b[i:i + 8], i + 8
        elif wt == 5:
            val, i = b[i:i + 4], i + 4
        elif wt == 2:
            n, i = _varint(b, i)
            val, i = b[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, val


def _repeated(wt: int, val, kind: str) -> list:
    """A repeated scalar, packed (wire type 2) or not."""
    if kind == "float":
        return list(np.frombuffer(val, "<f4")) if wt in (2, 5) else []
    if wt == 0:
        return [val]
    out, i = [], 0
    while i < len(val):
        v, i = _varint(val, i)
        out.append(v)
    return out


def load_canonical_mesh(blob: bytes) -> CanonicalMesh:
    """Parse the canonical face mesh out of a FaceLandmarker ``.task`` bundle's ``GEOMETRY_ENTRY``.

    ``GeometryPipelineMetadata``: field 1 = canonical mesh (vertex_type, primitive_type,
    vertex_buffer = 5 floats per vertex x y z u v, index_buffer), field 2 = procrustes basis
    (landmark_id, weight). Parsed at the wire level: mediapipe's wheel ships no Python proto classes.
    """
    verts, idx, pids, pw = [], [], [], []
    for num, wt, val in _fields(blob):
        if num == 1 and wt == 2:
            for n2, wt2, v2 in _fields(val):
                if n2 == 3:
                    verts += _repeated(wt2, v2, "float")
                elif n2 == 4:
                    idx += _repeated(wt2, v2, "int")
        elif num == 2 and wt == 2:
            ref = {n2: v2 for n2, _, v2 in _fields(val)}
            pids.append(int(ref.get(1, 0)))
            pw.append(float(np.frombuffer(ref[2], "<f4")[0]) if 2 in ref else 0.0)
    v = np.asarray(verts, np.float64).reshape(-1, 5)[:, :3]
    if v.shape[0] != N_MESH:
        raise ValueError(f"canonical mesh has {v.shape[0]} vertices, expected {N_MESH}")
    return CanonicalMesh(v, np.asarray(idx, np.int32).reshape(-1, 3), np.asarray(pids, np.int32),
                         np.asarray(pw, np.float64))


# ----------------------------------------------------------------------------- rotations

def rodrigues(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle [..., 3] -> rotation matrices [..., 3, 3] (stable near zero)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def log_rotation(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> axis-angle [N, 3]."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def euler_yxz(R: np.ndarray) -> np.ndarray:
    """Head rotations [N, 3, 3] -> [N, 3] (yaw about y, pitch about x, roll about z), intrinsic Y-X-Z, rad."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_euler("YXZ")


def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted similarity ``dst[n] ~ s R src + t``: src [K, 3], dst [N, K, 3], w [K].

    Returns s [N], R [N, 3, 3] (proper rotations), t [N, 3].
    """
    w = w / w.sum()
    mu_s = w @ src
    mu_d = np.einsum("k,nkd->nd", w, dst)
    sc = src - mu_s
    dc = dst - mu_d[:, None]
    cov = np.einsum("nki,k,kj->nij", dc, w, sc)
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones((len(dst), 3))
    D[:, 2] = d
    R = U @ (D[:, :, None] * Vt)
    var_s = w @ (sc * sc).sum(1)
    s = (S * D).sum(1) / var_s
    t = mu_d - s[:, None] * np.einsum("nij,j->ni", R, mu_s)
    return s, R, t


# ----------------------------------------------------------------------------- closed-form init

@dataclass
class Init:
    omega: np.ndarray   # [N, 3] head rotation (axis-angle, head space)
    uv0: np.ndarray     # [N, 2] projected head origin, px
    log_s: np.ndarray   # [N] log pixels-per-cm
    posefree: np.ndarray  # [N, K, 3] observed landmarks with the similarity removed (cm, head space)


def closed_form_init(obs3: np.ndarray, mesh: CanonicalMesh) -> Init:
    """Per-frame Umeyama similarity from the canonical mesh to mediapipe's 3D landmarks.

    ``obs3`` [N, K, 3]: x, y in px and mediapipe's relative depth z in the same pixel scale, i.e.
    a scaled orthographic view in the OpenCV frame. The rigid fit uses mediapipe's own procrustes
    landmarks and weights; its rotation, image position and scale initialise the perspective pose.
    """
    ids = mesh.procrustes_ids
    s, R, t = umeyama(mesh.vertices[ids], obs3[:, ids], mesh.procrustes_w)
    omega = log_rotation(FLIP @ R)
    posefree = np.einsum("nji,nkj->nki", R, obs3 - t[:, None]) / s[:, None, None]
    return Init(omega, t[:, :2].copy(), np.log(s), posefree)


@dataclass
class LinearModel:
    mean: np.ndarray       # [K, 3] cm
    identity: np.ndarray   # [K, 3] cm
    basis: np.ndarray      # [K * 3, E] cm per unit coefficient
    coeffs: np.ndarray     # [N, E] initial coefficients


def rigid_directions(shape: np.ndarray) -> np.ndarray:
    """Orthonormal [K*3, 7] basis of the infinitesimal similarity motions of ``shape`` [K, 3].

    Three rotations (omega x X), three translations and a scale about the centroid. Expression
    components are kept orthogonal to these, so expression can never mimic a (small) head motion
    and the pose stays identifiable.
    """
    X = shape - shape.mean(0)
    K = len(X)
    cols = [np.cross(np.eye(3)[a], X).reshape(-1) for a in range(3)]
    cols += [np.tile(np.eye(3)[a], K) for a in range(3)]
    cols.append(X.reshape(-1))
    Q, _ = np.linalg.qr(np.stack(cols, 1))
    return Q


def without_head_motion(x: np.ndarray, shape: np.ndarray, pose_ids: np.ndarray | None = None) -> np.ndarray:
    """Motions ``x`` [M, K*3] of ``shape`` [K, 3] minus the head motion (infinitesimal similarity) in them: the
    similarity that best fits all points (``pose_ids`` None: an orthogonal projection), or the one that fits the
    points ``pose_ids`` alone, applied to every point (they are then left still)."""
    G = rigid_directions(shape)                # [K*3, 7] orthonormal
    if pose_ids is None:
        return x - (x @ G) @ G.T
    rows = (np.asarray(pose_ids)[:, None] * 3 + np.arange(3)).reshape(-1)
    theta = np.linalg.lstsq(G[rows], x[:, rows].T, rcond=None)[0]          # [7, M]: those points' motion
    return x - (G @ theta).T


def build_model(init: Init, mesh: CanonicalMesh, weights: np.ndarray, n_expr: int,
                pose_ids: np.ndarray | None = None) -> LinearModel:
    """Mean = canonical mesh (iris: the clip's mean); identity = clip mean - mean; basis = PCA of the rest.

    Before the PCA, the part of each frame's pose-free shape that a head motion explains is removed (gauge
    fixing, :func:`without_head_motion`), so that expression and pose cannot trade places. ``pose_ids`` says which
    points define "head motion": None, the whole face; the skull's rigid points (``tracking.pose_points: rigid``),
    which the expressions then leave still, so the pose follows them. With the whole face, the similarity part of
    an opening jaw (the face grows taller) stays outside the expression basis and the fit explains it as the head
    moving closer: on talk_dfrf_cnn_en the tracked depth then follows the jaw (r -0.68 at high pass; BENCHMARKS.md
    "Session 12").
    """
    K = init.posefree.shape[1]
    w = weights / weights.sum()
    clip_mean = np.einsum("n,nkd->kd", w, init.posefree)
    mean = clip_mean.copy()
    mean[:N_MESH] = mesh.vertices[:min(K, N_MESH)]
    resid = (init.posefree - clip_mean).reshape(len(w), K * 3)
    resid = without_head_motion(resid, clip_mean, pose_ids)
    sw = np.sqrt(w)[:, None]
    U, S, Vt = np.linalg.svd(resid * sw, full_matrices=False)
    E = min(n_expr, len(S))
    basis = Vt[:E].T * S[:E]                   # unit-variance coefficients under the weights
    coeffs = resid @ Vt[:E].T / np.maximum(S[:E], 1e-9)
    if E < n_expr:                             # very short clips: pad with inert components
        basis = np.pad(basis, ((0, 0), (0, n_expr - E)))
        coeffs = np.pad(coeffs, ((0, 0), (0, n_expr - E)))
    explained = float((S[:E] ** 2).sum() / max((S ** 2).sum(), 1e-12))
    log.info("expression PCA: %d components explain %.1f %% of the pose-free variance", E, 100 * explained)
    return LinearModel(mean, clip_mean - mean, basis, coeffs)


# ----------------------------------------------------------------------------- joint fit

@dataclass(frozen=True)
class FitWeights:
    huber_px: float = 1.0
    smooth_rot: float = 1.0       # second differences, in px moved at the face's radius
    smooth_trans: float = 1.0     # second differences of (u0, v0, face radius * log s), px
    smooth_expr: float = 0.02     # first differences of expression coefficients
    expr_prior: float = 1e-3      # ||e||^2 (unit prior variance)
    identity_prior: float = 1e-3  # ||identity||^2 in px at the mean scale
    basis_prior: float = 1e-2     # ||basis - PCA basis||^2 in px at the mean scale (if refined)
    focal_prior: float = 0.05     # (log f - log f_init)^2: focal is weakly observable when the head barely turns


@dataclass
class FitResult:
    omega: np.ndarray      # [N, 3]
    uv0: np.ndarray        # [N, 2]
    log_s: np.ndarray      # [N]
    coeffs: np.ndarray     # [N, E]
    identity: np.ndarray   # [K, 3]
    basis: np.ndarray      # [K*3, E]
    focal_px: float
    reproj_px: np.ndarray  # [N] mean 2D error over the fitted points
    loss: float


def shapes(mean, identity, basis, coeffs):
    """Pose-free shapes [N, K, 3] = mean + identity + basis @ e (torch or numpy)."""
    K = mean.shape[0]
    return mean + identity + (coeffs @ basis.T).reshape(-1, K, 3)


def project(S, omega, uv0, log_s, focal, cx, cy):
    """Perspective projection [N, K, 2] of head-space shapes S [N, K, 3] (torch).

    With ``A = F R S`` and ``t = ((uv0 - c) / s, f / s)``: ``uv = (s A_xy + uv0 - c) / (1 + s A_z / f) + c``
    (numerator and denominator of the pinhole division multiplied by ``s / f``: fewer big tensors).
    """
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=S.dtype, device=S.device)
    R = rodrigues(omega) * flip[:, None]          # F @ R(omega)
    A = torch.bmm(S, R.transpose(1, 2))
    s = torch.exp(log_s)
    centre = torch.tensor([cx, cy], dtype=S.dtype, device=S.device)
    inv = torch.reciprocal(1 + A[..., 2] * (s / focal)[:, None])
    return (A[..., :2] * s[:, None, None] + (uv0 - centre)[:, None]) * inv[..., None] + centre


def projected(mean: np.ndarray, res: FitResult, cx: float, cy: float) -> np.ndarray:
    """The fitted landmarks of ``res`` projected into the crop, [N, K, 2] px (numpy)."""
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    with torch.no_grad():
        S = shapes(T(mean), T(res.identity), T(res.basis), T(res.coeffs))
        return project(S, T(res.omega), T(res.uv0), T(res.log_s), res.focal_px, cx, cy).numpy()


def camera_translation(uv0: np.ndarray, log_s: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """(u0, v0, log s) -> OpenCV-frame translation [N, 3] in cm."""
    s = np.exp(log_s)[:, None]
    return np.concatenate([(uv0 - [cx, cy]) / s, focal / s], 1)


def _second_diff(x: torch.Tensor) -> torch.Tensor:
    return x[2:] - 2 * x[1:-1] + x[:-2] if len(x) > 2 else x[:0]


def fit(obs2: np.ndarray, frame_w: np.ndarray, model: LinearModel, init: Init, focal_init: float,
        cx: float, cy: float, wts: FitWeights = FitWeights(), *, iters: int = 200, fit_focal: bool = True,
        refine_basis: bool = True, device: str = "cpu", dtype=torch.float32, progress=None) -> FitResult:
    """Joint full-batch L-BFGS over all frames: poses, expressions, identity, basis and focal length.

    Data term: Huber of the 2D reprojection residuals (px), weighted per frame (``frame_w``: 0 drops
    a frame, which then follows its neighbours through the smoothness terms). Smoothness and priors
    are expressed in pixels at the clip's mean image scale so their weights are resolution-free.
    Every variable is optimised in px-equivalent units, which keeps L-BFGS well conditioned.
    """
    dev = torch.device(device)
    T = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)  # noqa: E731
    s_mean = float(np.exp(np.average(init.log_s, weights=np.maximum(frame_w, 1e-6))))
    radius = float(np.sqrt(((model.mean[:N_MESH] - model.mean[:N_MESH].mean(0)) ** 2).sum(1).mean()))
    rs = radius * s_mean                              # px moved by 1 rad at the face's radius
    sc = {"omega": rs, "uv0": 1.0, "log_s": rs, "coeffs": 1.0, "identity": s_mean, "basis": s_mean, "log_f": rs * 0.1}
    p = {
        "omega": T(init.omega * sc["omega"]), "uv0": T(init.uv0), "log_s": T(init.log_s * sc["log_s"]),
        "coeffs": T(model.coeffs), "identity": T(model.identity * sc["identity"]),
        "log_f": T(np.log(focal_init) * sc["log_f"]),
    }
    if refine_basis:
        p["basis"] = T(model.basis * sc["basis"])
    if not fit_focal:
        p["log_f"].requires_grad_(False)
    params = [v.requires_grad_() for k, v in p.items() if not (k == "log_f" and not fit_focal)]
    log_f0 = float(np.log(focal_init))
    mean, basis0, obs, fw = T(model.mean), T(model.basis), T(obs2), T(frame_w)
    fw_sum = fw.sum().clamp_min(1e-6)

    def unpack():
        basis = p["basis"] / sc["basis"] if refine_basis else basis0
        return (p["omega"] / sc["omega"], p["uv0"], p["log_s"] / sc["log_s"], p["coeffs"],
                p["identity"] / sc["identity"], basis, torch.exp(p["log_f"] / sc["log_f"]))

    def objective():
        omega, uv0, log_s, coeffs, identity, basis, focal = unpack()
        uv = project(shapes(mean, identity, basis, coeffs), omega, uv0, log_s, focal, cx, cy)
        hub = torch.nn.functional.huber_loss(uv, obs, reduction="none", delta=wts.huber_px).sum(-1).mean(-1)
        data = (hub * fw).sum() / fw_sum
        smooth = (wts.smooth_rot * _second_diff(p["omega"]).pow(2).sum(-1).mean()
                  + wts.smooth_trans * (_second_diff(p["uv0"]).pow(2).sum(-1).mean()
                                        + _second_diff(p["log_s"]).pow(2).mean())
                  + wts.smooth_expr * (p["coeffs"][1:] - p["coeffs"][:-1]).pow(2).sum(-1).mean())
        prior = wts.expr_prior * p["coeffs"].pow(2).sum(-1).mean() + wts.identity_prior * p["identity"].pow(2).sum(-1).mean()
        if fit_focal:
            prior = prior + wts.focal_prior * (p["log_f"] / sc["log_f"] - log_f0) ** 2
        if refine_basis:
            prior = prior + wts.basis_prior * (p["basis"] - basis0 * sc["basis"]).pow(2).sum(0).mean()
        return data + smooth + prior

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=30, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)
    n_eval = [0]

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        n_eval[0] += 1
        if progress is not None:
            progress.update(1)
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(objective())
        omega, uv0, log_s, coeffs, identity, basis, focal = unpack()
        uv = project(shapes(mean, identity, basis, coeffs), omega, uv0, log_s, focal, cx, cy)
        err = (uv - obs).norm(dim=-1).mean(-1)
    log.info("L-BFGS: %d evaluations, loss %.4f, focal %.1f px", n_eval[0], loss, float(focal))
    N = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    return FitResult(N(omega), N(uv0), N(log_s), N(coeffs), N(identity), N(basis), float(focal),
                     N(err), loss)
