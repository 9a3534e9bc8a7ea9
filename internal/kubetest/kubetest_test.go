package kubetest_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m, testmain.After(kubetest.Stop))) }

func clientset(t *testing.T, cfg *rest.Config) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	return cs
}

// TestPodInAFreshNamespace: the admin credentials reach a real apiserver
// over verified TLS, a test gets a namespace of its own, and a pod object
// is accepted there without a ServiceAccount (no controller makes one).
func TestPodInAFreshNamespace(t *testing.T) {
	cfg := kubetest.Config(t)
	require.NotEmpty(t, cfg.CAData, "TLS is verified against the apiserver's certificate")
	require.False(t, cfg.Insecure)
	cs := clientset(t, cfg)
	ctx := context.Background()

	v, err := cs.Discovery().ServerVersion()
	require.NoError(t, err)
	assert.Equal(t, kubetest.Version, v.GitVersion)

	ns := kubetest.Namespace(t, cfg)
	other := kubetest.Namespace(t, cfg)
	require.NotEqual(t, ns, other)
	got, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, corev1.NamespaceActive, got.Status.Phase)

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "engine-smoke", Labels: map[string]string{"app": "smoke"}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "engine", Image: "bap-engine-ref:dev"}},
		},
	}
	created, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	assert.Equal(t, corev1.PodPending, created.Status.Phase, "no scheduler or kubelet acts on it")
	assert.Empty(t, created.Spec.NodeName)

	list, err := cs.CoreV1().Pods(other).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	assert.Empty(t, list.Items, "namespaces keep tests apart")

	// Validation is the real one: a pod without containers is refused.
	_, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "empty"}}, metav1.CreateOptions{})
	require.True(t, apierrors.IsInvalid(err), "got %v", err)
}

// TestRBACIsEnforced: a service account's token gets only what a Role
// grants it, so RBAC rules (the chart's among them) are really checked.
func TestRBACIsEnforced(t *testing.T) {
	cfg := kubetest.Config(t)
	cs := clientset(t, cfg)
	ctx := context.Background()
	ns := kubetest.Namespace(t, cfg)

	_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: ns}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	// The token request is signed with the harness's service-account key.
	tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reader", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, tok.Status.Token)

	sa := rest.CopyConfig(cfg)
	sa.BearerToken = tok.Status.Token
	saCS := clientset(t, sa)
	_, err = saCS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	require.NoError(t, err, "the Role grants listing pods")
	_, err = saCS.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "secrets are not granted; got %v", err)
	_, err = saCS.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "a Role grants nothing outside its namespace; got %v", err)
}

// TestCloseLeavesNothingBehind starts a private control plane and checks
// that Close kills both processes at once and removes its directory.
func TestCloseLeavesNothingBehind(t *testing.T) {
	kubetest.Shared(t) // skips (or fails in CI) like the others without binaries
	cp, err := kubetest.Start()
	require.NoError(t, err)
	pids := cp.PIDs()
	require.Len(t, pids, 2)
	dir := cp.Dir()
	assert.True(t, strings.HasPrefix(dir, "/dev/shm/"), "etcd's data is in memory: %s", dir)
	for name, pid := range pids {
		require.NoError(t, syscall.Kill(pid, 0), "%s runs", name)
	}
	t.Logf("private control plane ready in %s", cp.Started)

	begin := time.Now()
	require.NoError(t, cp.Close())
	assert.Less(t, time.Since(begin), 5*time.Second, "Close does not wait for the apiserver's graceful stop")
	for name, pid := range pids {
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "%s is gone", name)
	}
	_, err = os.Stat(dir)
	assert.True(t, os.IsNotExist(err), "the directory is removed")
}

// TestVersionMatchesTheToolsModule: the binaries kubetest looks for are the
// ones the tools module builds, and client-go is of the same release.
func TestVersionMatchesTheToolsModule(t *testing.T) {
	tools, err := os.ReadFile(filepath.Join("..", "..", "tools", "controlplane", "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes (v\S+)`).FindSubmatch(tools)
	require.NotNil(t, m, "tools/controlplane/go.mod requires k8s.io/kubernetes")
	assert.Equal(t, kubetest.Version, string(m[1]))

	main, err := os.ReadFile(filepath.Join("..", "..", "go.mod"))
	require.NoError(t, err)
	// Staging modules are v0.X.Y for Kubernetes v1.X.Y; the tools module
	// lists them all (its replace block), and the main module may require
	// any of them, at that one release only.
	staging := "v0" + strings.TrimPrefix(kubetest.Version, "v1")
	stagingMods := map[string]bool{}
	for _, line := range strings.Split(string(tools), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[1] == "=>" && strings.HasPrefix(f[0], "k8s.io/") {
			stagingMods[f[0]] = true
		}
	}
	require.Len(t, stagingMods, 33, "tools/controlplane pins the 33 staging modules of kubernetes")
	found := 0
	for _, line := range strings.Split(string(main), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && stagingMods[f[0]] {
			found++
			assert.Equal(t, staging, f[1], "%s in go.mod", f[0])
		}
	}
	assert.GreaterOrEqual(t, found, 3, "go.mod requires k8s.io/api, apimachinery and client-go")
	for _, line := range strings.Split(string(tools), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[1] == "=>" && strings.HasPrefix(f[0], "k8s.io/") {
			assert.Equal(t, staging, f[3], "tools/controlplane pins %s", f[0])
		}
	}
}
