package btrfs

// FS offers the package's subvolume and quota operations as methods, for
// the services that keep btrfs behind an interface of their own and test
// their logic against a fake (package mock has one).
type FS struct{}

func (FS) CreateSubvolume(path string) error                       { return CreateSubvolume(path) }
func (FS) Snapshot(src, dst string, readOnly bool) error           { return Snapshot(src, dst, readOnly) }
func (FS) Delete(path string) error                                { return Delete(path) }
func (FS) IsSubvolume(path string) (bool, error)                   { return IsSubvolume(path) }
func (FS) ConvertToSubvolume(path string) error                    { return ConvertToSubvolume(path) }
func (FS) LimitExclusive(path string, max int64) error             { return LimitExclusive(path, max) }
func (FS) RemoveStaleQgroups(path string) (int, error)             { return RemoveStaleQgroups(path) }
func (FS) Quota(path string) (QuotaMode, error)                    { return Quota(path) }
func (FS) EnableQuota(path string, m QuotaMode) (QuotaMode, error) { return EnableQuota(path, m) }
func (FS) SimpleQuotaSupported() bool                              { return SimpleQuotaSupported() }
