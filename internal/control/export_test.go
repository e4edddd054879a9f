package control

// PendingPeers is the number of peer sessions waiting for their hello.
func (s *PeerServer) PendingPeers() int { return len(s.pendingSlots()) }
