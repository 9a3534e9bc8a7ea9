// Package kubetest gives tests a real Kubernetes API server: kube-apiserver
// and etcd, built from source at pinned versions by scripts/controlplane.sh,
// started once per test binary on loopback with etcd's data in /dev/shm.
// There is no controller-manager, scheduler or kubelet: objects are stored
// and validated, admission and RBAC run, watches work, but nothing acts on
// them unless the test does.
//
//	cfg := kubetest.Config(t)          // admin (system:masters) credentials
//	ns := kubetest.Namespace(t, cfg)   // a fresh namespace for this test
//
// A package that uses kubetest stops the control plane after its tests
// through its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testmain.Run(m, testmain.After(kubetest.Stop))) }
//
// The binaries are looked for in BAP_KUBETEST_BIN_DIR, else in
// ${BAP_CACHE_DIR:-$HOME/.cache/bap-engine}/controlplane/<Version>, where
// scripts/controlplane.sh puts them. Without them tests skip, or fail when
// CI=true. The ServiceAccount admission plugin is off (no controller makes
// the `default` ServiceAccount), so pods can be created in any namespace.
package kubetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Version is the Kubernetes release the test control plane runs; it must
// match k8s.io/kubernetes in tools/controlplane/go.mod (a test checks).
const Version = "v1.37.2"

// EnvBinDir names a directory holding kube-apiserver and etcd, overriding
// the build cache.
const EnvBinDir = "BAP_KUBETEST_BIN_DIR"

var (
	sharedMu  sync.Mutex
	shared    *ControlPlane
	sharedErr error
	logOnce   sync.Once

	nsCount atomic.Int64
)

// Config returns admin credentials for the test binary's API server,
// starting it on first use (a few seconds). Each call returns a new copy,
// which the caller may change.
func Config(t testing.TB) *rest.Config {
	t.Helper()
	cp := Shared(t)
	return cp.Config()
}

// Shared returns the test binary's control plane, starting it on first use.
func Shared(t testing.TB) *ControlPlane {
	t.Helper()
	sharedMu.Lock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	cp, err := shared, sharedErr
	sharedMu.Unlock()
	if err != nil {
		fail(t, err)
	}
	logOnce.Do(func() { t.Logf("kubetest: %s", cp.describe()) })
	return cp
}

// Stop stops the control plane Shared started, if any, and removes its
// files. testmain.After(kubetest.Stop) calls it once the tests are done.
func Stop() error {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	var err error
	if shared != nil {
		err = shared.Close()
		shared = nil
	}
	sharedErr = errors.New("kubetest: the control plane was stopped")
	return err
}

// fail ends the test: missing binaries skip, unless CI=true where they fail;
// any other error fails.
func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNoBinaries) && os.Getenv("CI") != "true" {
		t.Skip(err.Error())
	}
	t.Fatal(err)
}

// Namespace creates a namespace of its own for this test on the API server
// cfg points at and deletes it when the test ends. Without a
// controller-manager a deleted namespace stays Terminating with its objects;
// they go with the control plane.
func Namespace(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: client: %v", err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := fmt.Sprintf("t%d-%s-%s", nsCount.Add(1), dnsLabel(t.Name(), 40), hex.EncodeToString(b))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bap-engine.test/kubetest": "true"}}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) && !stopped() {
			t.Errorf("kubetest: delete namespace %s: %v", name, err)
		}
	})
	return name
}

func stopped() bool {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	return shared == nil
}

// dnsLabel turns s into at most n characters of a DNS label: lower-case
// letters, digits and inner dashes.
func dnsLabel(s string, n int) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= n {
			break
		}
	}
	return strings.Trim(b.String(), "-")
}
