package docker

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Inspect describes the engine's container. ErrNotFound when there is none.
func (b *Backend) Inspect(ctx context.Context, engineID string) (backend.Instance, error) {
	name := ContainerName(engineID)
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return backend.Instance{}, wrap(err, "inspect container %s", name)
	}
	c := res.Container
	inst := backend.Instance{
		ID:   c.ID,
		Name: strings.TrimPrefix(c.Name, "/"),
	}
	if c.Config != nil {
		inst.EngineID = c.Config.Labels[backend.LabelEngineID]
		inst.ProductID = c.Config.Labels[backend.LabelProductID]
		inst.Replica = c.Config.Labels[backend.LabelReplica]
	}
	if c.State != nil {
		inst.Status = status(c.State.Status)
		inst.ExitCode = c.State.ExitCode
	}
	if t, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
		inst.CreatedAt = t.UTC()
	}
	return inst, nil
}

// List returns every container labelled as managed by this deployment,
// whatever its state.
func (b *Backend) List(ctx context.Context) ([]backend.Instance, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerList(cctx, client.ContainerListOptions{All: true, Filters: b.labelFilter()})
	if err != nil {
		return nil, wrap(err, "list containers of deployment %s", b.cfg.Deployment)
	}
	out := make([]backend.Instance, 0, len(res.Items))
	for _, c := range res.Items {
		inst := backend.Instance{
			ID:        c.ID,
			EngineID:  c.Labels[backend.LabelEngineID],
			ProductID: c.Labels[backend.LabelProductID],
			Replica:   c.Labels[backend.LabelReplica],
			Status:    status(c.State),
			CreatedAt: time.Unix(c.Created, 0).UTC(),
			ExitCode:  exitCodeFromStatus(c.Status),
		}
		if len(c.Names) > 0 {
			inst.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, inst)
	}
	return out, nil
}

// labelFilter selects this deployment's managed containers.
func (b *Backend) labelFilter() client.Filters {
	return make(client.Filters).Add("label",
		backend.LabelManaged+"=true",
		backend.LabelDeployment+"="+b.cfg.Deployment)
}

// status maps Docker's container states onto backend statuses. A container
// that is restarting, being removed or dead has no running process: exited.
func status(s container.ContainerState) backend.Status {
	switch s {
	case container.StateCreated:
		return backend.StatusCreated
	case container.StateRunning:
		return backend.StatusRunning
	case container.StatePaused:
		return backend.StatusPaused
	}
	return backend.StatusExited
}

// exitCodeFromStatus reads the exit code from a list entry's human status
// ("Exited (137) 5 seconds ago"), the only place the list API reports it.
func exitCodeFromStatus(s string) int {
	rest, ok := strings.CutPrefix(s, "Exited (")
	if !ok {
		return 0
	}
	code, _, ok := strings.Cut(rest, ")")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		return 0
	}
	return n
}
