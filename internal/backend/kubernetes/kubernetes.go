package kubernetes

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/hub"
)

// Defaults applied by New to a zero Config field.
const (
	DefaultNamespace    = "default"                 // when not in a pod and ORCH_K8S_NAMESPACE is unset
	DefaultVolumeSize   = "1Gi"                     // ORCH_K8S_VOLUME_SIZE's default
	DefaultDeployment   = "default"                 // ORCH_DEPLOYMENT_ID's default
	DefaultImage        = "september-engine:latest" // ORCH_ENGINE_IMAGE's default
	DefaultHelperImage  = "bap-engine:latest"       // ORCH_HELPER_IMAGE's default
	DefaultCallTimeout  = 10 * time.Second          // bound of one API call
	DefaultStartTimeout = 2 * time.Minute           // bound of waiting for a Pod to run
	DefaultResync       = 30 * time.Second          // informer resync period
	// DefaultQPS and DefaultBurst replace client-go's client-side rate
	// limit (5 and 10), which a fleet of engines outgrows at once.
	DefaultQPS   = 100
	DefaultBurst = 200
)

// LabelShard carries the engine's shard (SPEC §15) on its Pod and PVC, so a
// replica can select its shards' engines.
const LabelShard = "bap-engine.shard"

// Annotations of the engine's PVC (the instance) and Pod.
const (
	// annoSpec holds what Create was given, as JSON (specAnno).
	annoSpec = "bap-engine.spec"
	// annoState is created, started or paused: what an instance without a
	// Pod is (never started, exited, paused).
	annoState = "bap-engine.state"
	// annoInstance names the instance (one Create of a spec) on the PVC and
	// on the Pod made from it.
	annoInstance = "bap-engine.instance"
)

// Instance states kept in annoState.
const (
	stateCreated = "created"
	stateStarted = "started"
	statePaused  = "paused"
)

// What every engine Pod looks like from the inside (SPEC §3, §10).
const (
	enginePort    = 8000
	dataDir       = "/data"
	catalogDir    = "/catalog"
	dbPath        = dataDir + "/brain.sqlite"
	namePrefix    = "engine-"
	containerName = "engine"
	dataVolume    = "data"
	catalogVolume = "catalog"
	// podGrace is the Pod's terminationGracePeriodSeconds: SPEC §3's 30 s
	// for deletions the orchestrator did not time itself (drains, evictions).
	podGrace = 30
	// saNamespaceFile is where a pod finds its own namespace.
	saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// reservedEnv are the variables the backend sets itself; a passthrough entry
// must never override them.
var reservedEnv = []string{"ENGINE_KEY_HASH", "SQLITE_DB_PATH", "CATALOG_DIR"}

// validEngineID keeps engine ids inside Pod names and label values (a DNS
// label: lowercase letters, digits and inner dashes, at most 63).
var validEngineID = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Config configures a kubernetes Backend. Zero fields take the defaults.
type Config struct {
	// Namespace is where engine Pods and PVCs live (ORCH_K8S_NAMESPACE);
	// empty: the orchestrator pod's own namespace, else "default".
	Namespace string
	// StorageClass is the PVCs' class (ORCH_K8S_STORAGE_CLASS); empty: the
	// cluster's default class.
	StorageClass string
	// VolumeSize is each engine's PVC request (ORCH_K8S_VOLUME_SIZE).
	VolumeSize string
	// CatalogPVC is a PVC mounted read-only at /catalog in every engine
	// (ORCH_K8S_CATALOG_PVC); empty mounts nothing.
	CatalogPVC string
	// Passthrough names the orchestrator variables handed to engines
	// (ORCH_ENGINE_ENV_PASSTHROUGH); unset or empty ones are left out.
	Passthrough []string
	// Getenv reads the passthrough values; nil means os.Getenv.
	Getenv func(string) string
	// Deployment is the bap-engine.deployment label value (ORCH_DEPLOYMENT_ID).
	Deployment string
	// DefaultImage is used when a Spec names no image (ORCH_ENGINE_IMAGE).
	DefaultImage string
	// HelperImage is the orchestrator's own image (ORCH_HELPER_IMAGE), run
	// briefly as a Pod to copy brain snapshots between PVCs.
	HelperImage string
	// CallTimeout bounds every API call.
	CallTimeout time.Duration
	// StartTimeout bounds the wait for a created Pod to run (scheduled,
	// image pulled, container started, IP given). Pods that cannot start
	// fail sooner, with Kubernetes' reason.
	StartTimeout time.Duration
	// Resync is the informer's resync period: terminated engines the watch
	// did not report are reported again at this pace.
	Resync time.Duration
	// Shard gives an engine's shard for LabelShard; nil puts no shard label.
	Shard func(engineID string) int
	// Owns reports whether this replica handles the engine's background
	// work (holds its shard): Events reports only those. nil: every engine.
	Owns func(engineID string) bool
	// Kubeconfig is a kubeconfig file; empty: in-cluster configuration when
	// running in a pod, else KUBECONFIG or ~/.kube/config.
	Kubeconfig string
	// REST, when set, is used instead of Kubeconfig (tests, tools).
	REST *rest.Config
	// Logger receives informer and cleanup trouble; nil discards.
	Logger *slog.Logger
}

// withDefaults fills zero fields and rejects impossible values.
func (c Config) withDefaults() (Config, error) {
	c.Deployment = cmp.Or(c.Deployment, DefaultDeployment)
	c.DefaultImage = cmp.Or(c.DefaultImage, DefaultImage)
	c.HelperImage = cmp.Or(c.HelperImage, DefaultHelperImage)
	c.VolumeSize = cmp.Or(c.VolumeSize, DefaultVolumeSize)
	c.CallTimeout = cmp.Or(c.CallTimeout, DefaultCallTimeout)
	c.StartTimeout = cmp.Or(c.StartTimeout, DefaultStartTimeout)
	c.Resync = cmp.Or(c.Resync, DefaultResync)
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
		if b, err := os.ReadFile(saNamespaceFile); err == nil && strings.TrimSpace(string(b)) != "" {
			c.Namespace = strings.TrimSpace(string(b))
		}
	}
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.CallTimeout < 0 || c.StartTimeout < 0 || c.Resync < 0 {
		return c, errors.New("kubernetes backend: negative duration")
	}
	q, err := resource.ParseQuantity(c.VolumeSize)
	if err != nil || q.Sign() <= 0 {
		return c, fmt.Errorf("kubernetes backend: volume size %q is not a positive quantity such as 1Gi", c.VolumeSize)
	}
	return c, nil
}

// Backend runs each engine as a Pod with a PVC. It implements
// backend.Backend.
type Backend struct {
	cfg      Config
	cs       kubernetes.Interface
	size     resource.Quantity
	selector string // this deployment's managed objects

	pods     corelisters.PodLister
	stopInf  chan struct{}
	informer interface{ HasSynced() bool }

	hub       *hub.Hub[backend.Event]
	closed    chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex
	waiters  map[string]chan struct{} // engine id → closed on its next Pod event
	ips      map[string]podIP         // engine id → its current Pod's address
	own      map[string]bool          // Pod UIDs this process deleted
	reported map[string]time.Time     // Pod UIDs reported terminated, and when
	gone     map[string]time.Time     // Pod UIDs seen deleted, until forgotten
	lastLogs map[string][]byte        // engine id → its last deleted Pod's log
}

var _ backend.Backend = (*Backend)(nil)

// podIP is the address of one Pod of an engine.
type podIP struct {
	uid string
	ip  string
}

// RESTConfig loads the client configuration New uses when Config.REST is
// nil: the in-cluster configuration when running in a pod (and kubeconfig
// is empty), else the kubeconfig file (KUBECONFIG or ~/.kube/config when
// kubeconfig is empty).
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if rc, err := rest.InClusterConfig(); err == nil {
			return rc, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration (not in a pod, and no usable kubeconfig): %w", err)
	}
	return rc, nil
}

// New connects to the API server, checks that the engine namespace can be
// read, and starts the engine Pod informer; it returns once the informer
// has listed the Pods. An unreachable API server is backend.ErrUnavailable.
// Close stops the informer.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	rc := cfg.REST
	if rc == nil {
		if rc, err = RESTConfig(cfg.Kubeconfig); err != nil {
			return nil, err
		}
	}
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 {
		rc.QPS = DefaultQPS
	}
	if rc.Burst == 0 {
		rc.Burst = DefaultBurst
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return NewForClient(ctx, cs, cfg)
}

// NewForClient is New with a client already made (Config.REST and
// Kubeconfig are ignored).
func NewForClient(ctx context.Context, cs kubernetes.Interface, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:  cfg,
		cs:   cs,
		size: resource.MustParse(cfg.VolumeSize),
		selector: labels.SelectorFromSet(labels.Set{
			backend.LabelManaged:    "true",
			backend.LabelDeployment: cfg.Deployment,
		}).String(),
		hub:      &hub.Hub[backend.Event]{},
		closed:   make(chan struct{}),
		waiters:  map[string]chan struct{}{},
		ips:      map[string]podIP{},
		own:      map[string]bool{},
		reported: map[string]time.Time{},
		gone:     map[string]time.Time{},
		lastLogs: map[string][]byte{},
	}
	cctx, cancel := b.call(ctx)
	_, err = cs.CoreV1().Pods(cfg.Namespace).List(cctx, metav1.ListOptions{LabelSelector: b.selector, Limit: 1})
	cancel()
	if err != nil {
		return nil, wrap(err, "list engine pods in namespace %s (the orchestrator needs pods, pods/log, persistentvolumeclaims and events there)", cfg.Namespace)
	}
	if err := b.startInformer(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Close stops the informer and ends every Events channel. Engines keep
// running.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.closed)
		if b.stopInf != nil {
			close(b.stopInf)
		}
	})
	return nil
}

// Name reports "kubernetes".
func (b *Backend) Name() string { return "kubernetes" }

// Namespace is the namespace engines live in.
func (b *Backend) Namespace() string { return b.cfg.Namespace }

// Client is the API client the backend uses (for tools and tests).
func (b *Backend) Client() kubernetes.Interface { return b.cs }

// PodName is the Pod of an engine: engine-<engine_id>.
func PodName(engineID string) string { return namePrefix + engineID }

// ClaimName is the data PVC of an engine (backend.DataName), the name the
// Docker volumes have.
func ClaimName(engineID string) string { return backend.DataName(engineID) }

// URL is http://<pod IP>:8000 for the engine's current Pod, as the informer
// or the last Start saw it; "" when no Pod of the engine has an address
// (port is not used: Pods have no host ports).
func (b *Backend) URL(engineID string, _ int) string {
	b.mu.Lock()
	ip, ok := b.ips[engineID]
	b.mu.Unlock()
	if !ok || ip.ip == "" {
		return ""
	}
	return "http://" + joinHostPort(ip.ip, enginePort)
}

func joinHostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:" + strconv.Itoa(port)
	}
	return ip + ":" + strconv.Itoa(port)
}

// call gives one API call its own deadline.
func (b *Backend) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.cfg.CallTimeout)
}

// specAnno is what Create was given, kept on the PVC.
type specAnno struct {
	Image    string    `json:"image"`
	KeyHash  string    `json:"key_hash"`
	Port     int       `json:"port"`
	MemoryMB int       `json:"memory_mb,omitempty"`
	CPUs     float64   `json:"cpus,omitempty"`
	Created  time.Time `json:"created"`
}

// same reports whether two specs make the same engine.
func (s specAnno) same(o specAnno) bool {
	return s.Image == o.Image && s.KeyHash == o.KeyHash && s.Port == o.Port && s.MemoryMB == o.MemoryMB && s.CPUs == o.CPUs
}

// labels are put on an engine's PVC and Pod.
func (b *Backend) labels(spec backend.Spec) map[string]string {
	l := backend.Labels(spec, b.cfg.Deployment)
	if b.cfg.Shard != nil {
		l[LabelShard] = strconv.Itoa(b.cfg.Shard(spec.EngineID))
	}
	return l
}

// env is the engine's whole environment: the contract's variables and the
// passthrough list, never anything else of the orchestrator's.
func (b *Backend) env(keyHash string) []corev1.EnvVar {
	env := []corev1.EnvVar{
		{Name: "ENGINE_KEY_HASH", Value: keyHash},
		{Name: "SQLITE_DB_PATH", Value: dbPath},
		{Name: "CATALOG_DIR", Value: catalogDir},
	}
	for _, name := range b.cfg.Passthrough {
		name = strings.TrimSpace(name)
		if name == "" || strings.Contains(name, "=") || slices.Contains(reservedEnv, name) {
			continue
		}
		if v := b.cfg.Getenv(name); v != "" {
			env = append(env, corev1.EnvVar{Name: name, Value: v})
		}
	}
	return env
}

// resources turns the spec's ceilings into limits (0: no ceiling).
// Requests default to the limits, so a ceiling is also a reservation.
func resources(s specAnno) corev1.ResourceRequirements {
	lim := corev1.ResourceList{}
	if s.MemoryMB > 0 {
		lim[corev1.ResourceMemory] = *resource.NewQuantity(int64(s.MemoryMB)*1024*1024, resource.BinarySI)
	}
	if s.CPUs > 0 {
		lim[corev1.ResourceCPU] = *resource.NewMilliQuantity(int64(math.Round(s.CPUs*1000)), resource.DecimalSI)
	}
	if len(lim) == 0 {
		return corev1.ResourceRequirements{}
	}
	return corev1.ResourceRequirements{Limits: lim}
}

func validateSpec(spec backend.Spec) error {
	switch {
	case !validEngineID.MatchString(spec.EngineID):
		return fmt.Errorf("kubernetes backend: engine id %q is not a DNS label (lowercase letters, digits, dashes)", spec.EngineID)
	case strings.HasSuffix(ClaimName(spec.EngineID), "-"):
		return fmt.Errorf("kubernetes backend: engine id %q: its first 12 characters end with a dash", spec.EngineID)
	}
	if err := spec.Check(); err != nil {
		return fmt.Errorf("kubernetes backend: %w", err)
	}
	return nil
}

// podFor builds the engine's Pod from its PVC (labels, spec, instance).
func (b *Backend) podFor(engineID string, claim *corev1.PersistentVolumeClaim, s specAnno) *corev1.Pod {
	lbl := map[string]string{}
	for _, k := range []string{backend.LabelManaged, backend.LabelEngineID, backend.LabelProductID,
		backend.LabelDeployment, backend.LabelReplica, LabelShard} {
		if v, ok := claim.Labels[k]; ok {
			lbl[k] = v
		}
	}
	mounts := []corev1.VolumeMount{{Name: dataVolume, MountPath: dataDir}}
	volumes := []corev1.Volume{{Name: dataVolume, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name}}}}
	if b.cfg.CatalogPVC != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: catalogVolume, MountPath: catalogDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: catalogVolume, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: b.cfg.CatalogPVC, ReadOnly: true}}})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        PodName(engineID),
			Namespace:   b.cfg.Namespace,
			Labels:      lbl,
			Annotations: map[string]string{annoInstance: claim.Annotations[annoInstance]},
		},
		Spec: podSpec(podGrace, corev1.Container{
			Name:         containerName,
			Image:        s.Image,
			Env:          b.env(s.KeyHash),
			Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: enginePort, Protocol: corev1.ProtocolTCP}},
			VolumeMounts: mounts,
			Resources:    resources(s),
		}, volumes),
	}
}

// podSpec is the spec of every Pod the backend makes: one container, never
// restarted by the kubelet, no service account token and no service links.
func podSpec(grace int64, c corev1.Container, volumes []corev1.Volume) corev1.PodSpec {
	return corev1.PodSpec{
		RestartPolicy:                 corev1.RestartPolicyNever,
		AutomountServiceAccountToken:  ptr(false),
		EnableServiceLinks:            ptr(false),
		TerminationGracePeriodSeconds: &grace,
		Containers:                    []corev1.Container{c},
		Volumes:                       volumes,
	}
}

func ptr[T any](v T) *T { return &v }
