package kubetest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// syncClaim plays the PVC protection controller: a PVC being deleted loses
// its finalizer once no live Pod uses it, and its directory goes with it.
func (n *Node) syncClaim(name string) error {
	pvc, err := n.pvcs.PersistentVolumeClaims(n.cfg.Namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || pvc.DeletionTimestamp == nil {
		return err
	}
	pods, err := n.pods.Pods(n.cfg.Namespace).List(labels.Everything())
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == name {
				return errors.New("in use") // retried with backoff; Pod events requeue nothing here
			}
		}
	}
	if err := os.RemoveAll(n.claimDir(pvc)); err != nil {
		return err
	}
	if !hasFinalizer(pvc, pvcProtection) {
		return nil
	}
	claims := n.cs.CoreV1().PersistentVolumeClaims(n.cfg.Namespace)
	return updateLatest(name, pvc.UID, claims.Get, claims.Update, func(cur *corev1.PersistentVolumeClaim) {
		var kept []string
		for _, f := range cur.Finalizers {
			if f != pvcProtection {
				kept = append(kept, f)
			}
		}
		cur.Finalizers = kept
	})
}

func hasFinalizer(pvc *corev1.PersistentVolumeClaim, f string) bool {
	for _, x := range pvc.Finalizers {
		if x == f {
			return true
		}
	}
	return false
}

// Pod addresses: 127.<a>.<b>.<c>, <a> fixed per process (so concurrent
// test binaries rarely meet), names keep their address unless FreshIPs.
var ips = struct {
	sync.Mutex
	base   int
	next   int
	byName map[string]string
	inUse  map[string]types.UID
}{byName: map[string]string{}, inUse: map[string]types.UID{}}

// allocIP gives the Pod an address whose port 8000 is free.
func (n *Node) allocIP(pod *corev1.Pod) (string, error) {
	ips.Lock()
	defer ips.Unlock()
	if ips.base == 0 {
		ips.base = 16 + (os.Getpid() % 200)
	}
	key := pod.Namespace + "/" + pod.Name
	if ip, ok := ips.byName[key]; ok && !n.cfg.FreshIPs && free(ip) {
		ips.inUse[ip] = pod.UID
		return ip, nil
	}
	for range 1 << 16 {
		ips.next++
		ip := fmt.Sprintf("127.%d.%d.%d", ips.base, (ips.next>>8)&0xff, ips.next&0xff)
		if ips.next&0xff == 0 || ips.next&0xff == 255 {
			continue
		}
		if _, taken := ips.inUse[ip]; taken {
			continue
		}
		if !free(ip) {
			continue
		}
		ips.byName[key] = ip
		ips.inUse[ip] = pod.UID
		return ip, nil
	}
	return "", errors.New("kubetest: no free loopback address")
}

// free reports whether ip:8000 can be listened on.
func free(ip string) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "8000"))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// Client is the node's API client (for tests' assertions).
func (n *Node) Client() kubernetes.Interface { return n.cs }
